"""`tierflow export` of a diffusers Stable-Diffusion pipeline: a tiny random-init pipeline built from
configs here (no download), exported to tierflow's component form and painted by DiffusionPipeline
(numpy + ONNX Runtime), compared pixel for pixel with diffusers' own pipeline on the same latents."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from tests.support.cli import assert_one_line_error, cli  # noqa: E402
from tierflow.cli import app  # noqa: E402
from tierflow.compiler import export_diffusers as ed  # noqa: E402
from tierflow.errors import (  # noqa: E402
    ExportError,
    InvalidInputError,
    InvalidModelError,
    MissingExtraError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from tierflow.runtime import diffusion as dm  # noqa: E402
from tierflow.runtime.session import SessionOptions  # noqa: E402

pytestmark = pytest.mark.export

THREADS = SessionOptions(intra_op_threads=1)
MAX_LENGTH = 16  # the tokenizer pads to it; the text encoder has as many positions
PROMPT = "the red cat"
# Merges of the test's BPE: enough that words become several tokens, and some whole ones.
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>"),
          ("r", "e"), ("re", "d</w>"), ("o", "n</w>"), ("i", "n"), ("in", "g</w>"), ("p", "h"), ("o", "t")]
TOKENIZER_PROMPTS = [
    "", PROMPT, "The CAT and the RED thing!!", "a photo of 12345 cats, isn't it? they're",
    "  several   spaces\tand\nnewlines ", "Café naïve résumé Ångström", "東京 タワー 😀", "x²+y½ 3.14",
    "it's 'quoted' !'s", "<|endoftext|> inside <|startoftext|>x", "<|ENDOFTEXT|>", "İstanbul ΣΑΣ",
    "the red cat and the red thing on the photo in the morning, a very long prompt",  # cut at 16
]


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character table, written out here independently of tierflow's."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return [table[b] for b in range(256)]


def _write_tokenizer(folder: Path) -> int:
    """A CLIP-style byte-level BPE: the 256 byte symbols, each with </w>, a few merges, BOS/EOS."""
    folder.mkdir(parents=True)
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in MERGES),
              "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges = "\n".join(["#version: 0.2", *(f"{a} {b}" for a, b in MERGES)]) + "\n"
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return len(tokens)


def _save_pipeline(folder: Path, scheduler: str = "DDIMScheduler") -> Path:
    """A random-init Stable-Diffusion pipeline: 32-wide CLIP text encoder (2 layers), UNet (32, 64) with
    one cross-attention block each way, VAE (32, 64) with 4 latent channels: 16 px images."""
    vocab = _write_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(
        folder.parent / f"{folder.name}-tokenizer", model_max_length=MAX_LENGTH
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, vocab_size=vocab,
        max_position_embeddings=MAX_LENGTH, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    ))
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    common = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    if scheduler == "DDIMScheduler":  # Stable Diffusion 1.x's own settings
        sched = diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    else:
        sched = diffusers.EulerDiscreteScheduler(
            **common, timestep_spacing="trailing", prediction_type="v_prediction"
        )
    diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


def _diffusers(folder: Path) -> Any:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _paint(pipe: Any, prompt: str, latents: np.ndarray, steps: int, guidance: float) -> np.ndarray:
    """diffusers' image (H x W x 3 in [0, 1]) from the given initial latents."""
    side = latents.shape[-1] * 2
    with torch.no_grad():
        out = pipe(prompt, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance,
                   latents=torch.from_numpy(latents.copy()), output_type="np")
    return np.asarray(out.images[0], np.float32)


def _unit(image: np.ndarray) -> np.ndarray:
    """DiffusionPipeline.render's [1, 3, H, W] in [-1, 1] as diffusers' H x W x 3 in [0, 1]."""
    return np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)


@pytest.fixture(scope="module")
def ddim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The DDIM pipeline exported with the CLI (in process): (pipeline folder, output folder, CLI output)."""
    root = tmp_path_factory.mktemp("sd")
    folder, out = _save_pipeline(root / "pipe"), root / "exported"
    result = CliRunner().invoke(app, ["export", str(folder), "-o", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    return folder, out, result.output


@pytest.fixture(scope="module")
def euler(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ed.DiffusersExportResult]:
    """Euler with v-prediction and trailing spacing, exported with the API, weights in external data."""
    root = tmp_path_factory.mktemp("sd-euler")
    folder, out = _save_pipeline(root / "pipe", "EulerDiscreteScheduler"), root / "exported"
    options = ed.DiffusersExportOptions(threads=1, steps=3, guidance=4.0, external_data=True)
    return folder, out, ed.export_diffusers(folder, out, options)


def test_cli_writes_the_component_form_and_reports_the_check(ddim: tuple[Path, Path, str]) -> None:
    folder, out, text = ddim
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == {"pipeline.json", "text_encoder.onnx", "unet.onnx", "vae_decoder.onnx",
                     "tokenizer/vocab.json", "tokenizer/merges.txt"}
    doc = json.loads((out / "pipeline.json").read_text())
    assert (doc["latent_channels"], doc["vae_scale_factor"], doc["unet_scale_factor"]) == (4, 2, 2)
    assert (doc["sample_size"], doc["default_resolution"], doc["max_length"]) == (8, 16, MAX_LENGTH)
    assert doc["vae_scaling_factor"] == pytest.approx(0.18215)
    assert doc["scheduler"]["class"] == "DDIMScheduler"
    config = doc["scheduler"]["config"]
    assert config["steps_offset"] == 1 and config["set_alpha_to_one"] is False
    check = doc["verification"]
    assert 0 <= check["max_abs_diff"] <= 1e-4 and check["tolerance"] == 1e-2 and check["steps"] == 4
    for name in ("text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "verified", "max |pixel diff|"):
        assert name in text, text
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


Exported = tuple[Path, Path, ed.DiffusersExportResult]


def test_json_report_has_sizes_and_parameter_counts(euler: Exported) -> None:
    _, out, result = euler
    doc = ed.describe(result)
    json.dumps(doc)  # JSON-ready
    parts = {c["name"]: c for c in doc["components"]}
    assert set(parts) == {"text_encoder", "unet", "vae_decoder"}
    unet = diffusers.UNet2DConditionModel.from_pretrained(result.source, subfolder="unet")
    assert parts["unet"]["parameters"] == sum(p.numel() for p in unet.parameters())
    for c in result.components:  # external_data=True: weights beside each file
        assert c.data_path == out / f"{c.name}.onnx.data" and c.data_path.is_file()
        assert c.size_bytes == c.path.stat().st_size + c.data_path.stat().st_size
    assert result.scheduler == "EulerDiscreteScheduler" and result.max_abs_diff <= 1e-4


@pytest.mark.parametrize(("prompt", "steps", "guidance", "seed"), [
    (PROMPT, 4, 7.5, 1),
    ("a photo of the cat", 6, 1.0, 2),  # guidance 1: no classifier-free guidance, batch 1
])
def test_generated_pixels_equal_diffusers(
    ddim: tuple[Path, Path, str], prompt: str, steps: int, guidance: float, seed: int
) -> None:
    folder, out, _ = ddim
    runtime = dm.DiffusionPipeline.open(out, THREADS)
    result = runtime.generate(prompt, steps=steps, guidance=guidance, seed=seed)
    ref = _paint(_diffusers(folder), prompt, runtime.noise(seed), steps, guidance)
    assert result.pixels.shape == (16, 16, 3) and result.seed == seed and result.resolution == 16
    assert ((ref > 0.02) & (ref < 0.98)).mean() > 0.5  # mostly unsaturated: the pixels carry the comparison
    assert np.max(np.abs(result.pixels.astype(int) - np.rint(ref * 255).astype(int))) <= 1
    assert np.max(np.abs(_unit(runtime.render(prompt, runtime.noise(seed), steps=steps, guidance=guidance))
                         - ref)) < 1e-4
    assert [name for name, _ in result.stages] == ["text_encoder", "unet", "vae_decoder"]
    other = runtime.generate("a photo of the red thing", steps=steps, guidance=7.5, seed=seed)
    assert np.max(np.abs(other.pixels.astype(int) - result.pixels.astype(int))) > 10  # the prompt matters


def test_euler_v_prediction_pixels_equal_diffusers(euler: Exported) -> None:
    folder, out, _ = euler
    runtime = dm.DiffusionPipeline.open(out, THREADS)
    assert runtime.manifest.scheduler == "EulerDiscreteScheduler"
    latents = runtime.noise(5)
    ref = _paint(_diffusers(folder), PROMPT, latents, 5, 6.0)
    assert np.max(np.abs(_unit(runtime.render(PROMPT, latents, steps=5, guidance=6.0)) - ref)) < 1e-4


SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize(("name", "config"), [
    ("DDIMScheduler", {**SD, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
    ("DDIMScheduler", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                       "rescale_betas_zero_snr": True}),
    ("DDIMScheduler", {"timestep_spacing": "linspace", "prediction_type": "sample",
                       "clip_sample_range": 0.5}),
    ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2", "set_alpha_to_one": True}),
    ("EulerDiscreteScheduler", {**SD}),
    ("EulerDiscreteScheduler", {**SD, "timestep_spacing": "leading", "steps_offset": 1}),
    ("EulerDiscreteScheduler", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                                "rescale_betas_zero_snr": True}),
    ("EulerDiscreteScheduler", {"prediction_type": "sample", "final_sigmas_type": "sigma_min"}),
], ids=["ddim-sd", "ddim-zero-snr-v", "ddim-linspace-sample-clip", "ddim-cosine", "euler-sd",
        "euler-leading", "euler-zero-snr-v", "euler-sample-sigma-min"])
def test_scheduler_steps_equal_diffusers(name: str, config: dict[str, Any]) -> None:
    """The numpy schedule against diffusers' scheduler object on the same model outputs, step by step."""
    ref = getattr(diffusers, name)(**config)
    ref.set_timesteps(7)
    ours = dm.Schedule(name, {k: v for k, v in dict(ref.config).items() if not k.startswith("_")}, 7)
    assert np.array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-5)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 4, 8, 8)) * ours.init_noise_sigma).astype(np.float32)
    for i, t in enumerate(ref.timesteps):
        # each step from the same sample on both sides: float32 rounding at the first steps' large
        # sigmas (4096 with zero-terminal-SNR betas) would otherwise carry into every later comparison
        xt = torch.from_numpy(x.copy())
        out = rng.standard_normal(x.shape).astype(np.float32)
        scale = max(1.0, float(np.abs(x).max()))
        assert np.max(np.abs(ours.model_input(x, i) - ref.scale_model_input(xt, t).numpy())) <= 1e-5 * scale
        xt = ref.step(torch.from_numpy(out), t, xt).prev_sample
        x = ours.step(out, i, x)
        assert np.max(np.abs(x - xt.numpy())) <= 1e-5 * scale, (i, int(t))


def test_another_resolution_and_repeatable_seeds(ddim: tuple[Path, Path, str]) -> None:
    folder, out, _ = ddim
    runtime = dm.DiffusionPipeline.open(out, THREADS)
    latents = runtime.noise(3, 24)
    assert latents.shape == (1, 4, 12, 12)
    ref = _paint(_diffusers(folder), PROMPT, latents, 3, 7.5)
    image = runtime.render(PROMPT, latents, steps=3, guidance=7.5)
    assert image.shape == (1, 3, 24, 24) and np.max(np.abs(_unit(image) - ref)) < 1e-4
    first = runtime.generate(PROMPT, steps=2, seed=9, resolution=24)
    assert first.pixels.shape == (24, 24, 3)
    assert np.array_equal(first.pixels, runtime.generate(PROMPT, steps=2, seed=9, resolution=24).pixels)
    assert runtime.generate(PROMPT, steps=2).seed >= 0  # chosen and reported


def test_tokenizer_ids_equal_transformers(ddim: tuple[Path, Path, str]) -> None:
    folder, out, _ = ddim
    ours = dm.DiffusionPipeline.open(out, THREADS).tokenizer
    ref = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert ref.model_max_length == MAX_LENGTH
    for text in TOKENIZER_PROMPTS:
        expected = ref(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
        assert ours.encode(text).ids.tolist() == expected, text
    words = ref.convert_tokens_to_ids(["the</w>", "red</w>", "cat</w>"])
    assert ours.encode(PROMPT).ids.tolist()[:5] == [ref.bos_token_id, *words, ref.eos_token_id]
    assert ours.encode(TOKENIZER_PROMPTS[-1]).truncated[-3:] == ("very", "long", "prompt")
    assert ours.encode(PROMPT).truncated == ()


def _copy(folder: Path, to: Path, drop: str | None = None) -> Path:
    shutil.copytree(folder, to, ignore=(lambda _d, names: [n for n in names if n == drop]) if drop else None)
    return to


def _with_scheduler(folder: Path, to: Path, name: str) -> Path:
    _copy(folder, to)
    config = to / "scheduler" / "scheduler_config.json"
    for path, key in ((config, "_class_name"), (to / "model_index.json", None)):
        doc = json.loads(path.read_text())
        if key:
            doc[key] = name
        else:
            doc["scheduler"] = ["diffusers", name]
        path.write_text(json.dumps(doc))
    return to


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda f, d: _copy(f, d / "no-unet", drop="unet"), InvalidModelError, "unet/ folder is missing"),
    (lambda f, d: _with_scheduler(f, d / "pndm", "PNDMScheduler"), UnsupportedModelError,
     "scheduler PNDMScheduler is not supported"),
    (lambda f, d: (d / "plain").mkdir() or d / "plain", InvalidModelError, "has no model_index.json"),
    (lambda f, d: d / "missing", ModelNotFoundError, "no such pipeline folder"),
], ids=["no-unet", "unsupported-scheduler", "not-a-pipeline", "missing"])
def test_bad_pipelines_give_one_line_errors(
    ddim: tuple[Path, Path, str], tmp_path: Path, make: Any, error: type[Exception], message: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = make(ddim[0], tmp_path)
    out = tmp_path / "out"
    with pytest.raises(error, match=message) as info:
        ed.export_diffusers(source, out)
    assert "\n" not in str(info.value)
    if (source / "model_index.json").is_file():  # the CLI takes the pipeline path: exit 2, one line
        code, _, err = cli(capsys, monkeypatch, "export", str(source), "-o", str(out))
        assert_one_line_error(code, err, message)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_must_be_a_new_folder_or_an_earlier_export(
    ddim: tuple[Path, Path, str], tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        ed.export_diffusers(ddim[0], busy)
    with pytest.raises(ExportError, match="is a file"):
        ed.export_diffusers(ddim[0], busy / "notes.txt")
    assert (busy / "notes.txt").read_text() == "mine"
    earlier = _copy(ddim[1], tmp_path / "earlier")  # an earlier export is replaced as a whole
    (earlier / "stale.txt").write_text("old")
    result = ed.export_diffusers(ddim[0], earlier, ed.DiffusersExportOptions(threads=1, steps=1))
    check = json.loads((earlier / "pipeline.json").read_text())["verification"]
    assert result.steps == 1 and check["steps"] == 1
    assert not (earlier / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "earlier"]  # no staging left


def test_a_disagreeing_export_is_refused_and_nothing_is_written(
    ddim: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = dm.DiffusionPipeline.render

    def drifting(self: dm.DiffusionPipeline, *args: Any, **kwargs: Any) -> np.ndarray:
        return real(self, *args, **kwargs) + np.float32(0.05)  # 0.025 in [0, 1] pixels

    monkeypatch.setattr(dm.DiffusionPipeline, "render", drifting)
    with pytest.raises(ExportError, match="disagrees with diffusers") as info:
        ed.export_diffusers(ddim[0], tmp_path / "out", ed.DiffusersExportOptions(threads=1, steps=1))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_runtime_refuses_bad_folders_and_inputs(ddim: tuple[Path, Path, str], tmp_path: Path) -> None:
    out = ddim[1]
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        dm.DiffusionPipeline.open(tmp_path / "nothing")
    with pytest.raises(InvalidModelError, match="not an exported diffusion pipeline"):
        dm.DiffusionPipeline.open(ddim[0])  # the diffusers folder itself
    with pytest.raises(InvalidModelError, match="unet.onnx is missing"):
        dm.DiffusionPipeline.open(_copy(out, tmp_path / "no-unet", drop="unet.onnx"))
    bad = _copy(out, tmp_path / "euler-karras")
    doc = json.loads((bad / "pipeline.json").read_text())
    doc["scheduler"] = {"class": "EulerDiscreteScheduler", "config": {"use_karras_sigmas": True}}
    (bad / "pipeline.json").write_text(json.dumps(doc))
    with pytest.raises(UnsupportedModelError, match="use_karras_sigmas"):
        dm.DiffusionPipeline.open(bad)
    runtime = dm.DiffusionPipeline.open(out, THREADS)
    for kwargs, message in [
        ({"resolution": 18}, "not a multiple of 4"), ({"resolution": 0}, "out of range"),
        ({"steps": 0}, "steps must be"), ({"guidance": float("nan")}, "guidance must be"),
    ]:
        with pytest.raises(InvalidInputError, match=message) as info:
            runtime.generate(PROMPT, seed=0, **kwargs)
        assert "\n" not in str(info.value)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(MissingExtraError, match=r"diffusers .*pip install 'tierflow\[export\]'"):
        ed._require_extra()


def test_tierflow_run_paints_with_the_exported_folder(ddim: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, out, _ = ddim
    png = tmp_path / "cat.png"
    argv = ["run", str(out), "--prompt", PROMPT, "--resolution", "16", "--seed", "3", "-o", str(png)]
    result = CliRunner().invoke(app, [*argv, "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "resolution=16x16" in result.output and "seed=3" in result.output
    made = dm.DiffusionPipeline.open(out, THREADS).generate(PROMPT, seed=3, resolution=16)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), made.pixels)
    bad = CliRunner().invoke(app, ["run", str(out), "--prompt", PROMPT, "--resolution", "15"])
    assert bad.exit_code != 0
