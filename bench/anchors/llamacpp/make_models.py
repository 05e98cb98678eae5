"""The random-init Llama checkpoints of tierflow bench generate --large, as Hugging Face folders."""
import sys
from pathlib import Path
from tierflow.compiler.random_hf import save_random_llama, LlamaShape
shapes = {
    "hf-8x512": LlamaShape(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4),
    "hf-24x1024": LlamaShape(layers=24, hidden=1024, intermediate=2752, heads=16, kv_heads=8),
}
for name in sys.argv[1:]:
    out = Path.cwd() / name  # measure.sh runs this from its work folder
    if not out.exists():
        save_random_llama(out, shapes[name])
    print(name, sorted(p.name for p in out.iterdir()))
