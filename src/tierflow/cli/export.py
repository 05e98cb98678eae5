"""``tierflow export``: a Hugging Face causal LM -> tierflow's ONNX LM form, or a diffusers
Stable-Diffusion pipeline folder -> tierflow's component form (extra ``export``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tierflow.cli._common import console, err_console
from tierflow.compiler import export_diffusers as ed
from tierflow.compiler.export_hf import ExportOptions, ExportResult, describe, export_hf
from tierflow.errors import InvalidInputError


def export(
    source: Annotated[
        str,
        typer.Argument(
            help="Hugging Face model directory (config.json + weights), a cached hub id, or a diffusers "
            "pipeline folder (model_index.json)."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The .onnx file to write (a folder for a diffusers pipeline)."),
    ],
    opset: Annotated[int, typer.Option("--opset", min=14, help="ONNX opset version.")] = 18,
    max_seq_len: Annotated[
        int | None,
        typer.Option("--max-seq-len", min=2, help="Context length (default: max_position_embeddings)."),
    ] = None,
    no_tokenizer: Annotated[bool, typer.Option("--no-tokenizer", help="Do not embed the tokenizer.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help="CPU threads (0 = all).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a Hugging Face causal LM to ONNX with its KV cache, or a diffusers Stable-Diffusion pipeline
    to ONNX components; check the result against PyTorch / diffusers, and write it."""
    if ed.is_diffusers_pipeline(source):
        if max_seq_len is not None or no_tokenizer:
            raise InvalidInputError(
                "--max-seq-len and --no-tokenizer apply to causal LMs, not to a diffusers pipeline"
            )
        _export_pipeline(source, output, ed.DiffusersExportOptions(opset=opset, threads=threads), as_json)
        return
    options = ExportOptions(
        opset=opset, max_seq_len=max_seq_len, include_tokenizer=not no_tokenizer, threads=threads
    )
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"exporting {source}", total=None)
        result = export_hf(
            source, output, options, on_stage=lambda msg: progress.update(task, description=msg)
        )
    if as_json:
        typer.echo(json.dumps(describe(result), indent=2))
        return
    _report(result)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _report(r: ExportResult) -> None:
    context = f"context {r.max_seq_len}" if r.max_seq_len else "context unknown"
    _say(f"wrote {r.path} ({r.size_bytes / 1e6:.1f} MB) in {r.seconds:.1f}s")
    if r.data_path:
        _say(f"  weights in {r.data_path} (keep it next to the .onnx file)")
    _say(
        f"  {r.model_type}: {r.num_layers} layers, {r.kv_heads} KV heads x {r.head_dim}, "
        f"vocab {r.vocab_size}, {context}, tokenizer {'embedded' if r.tokenizer else 'none'}"
    )
    _say(
        f"  verified: ONNX Runtime matches PyTorch on prefill + decode, "
        f"max |logits diff| {r.max_abs_diff:.1e} (limit {r.allowed_diff:.1e})"
    )


def _export_pipeline(source: str, output: Path, options: ed.DiffusersExportOptions, as_json: bool) -> None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"exporting {source}", total=None)
        result = ed.export_diffusers(
            source, output, options, on_stage=lambda msg: progress.update(task, description=msg)
        )
    if as_json:
        typer.echo(json.dumps(ed.describe(result), indent=2))
        return
    _say(f"wrote {result.path}/ ({result.size_bytes / 1e6:.1f} MB) in {result.seconds:.1f}s")
    for c in result.components:
        weights = f", weights in {c.data_path.name}" if c.data_path else ""
        _say(f"  {c.path.name}: {c.parameters / 1e6:.2f} M parameters, {c.size_bytes / 1e6:.1f} MB{weights}")
    _say(
        f"  {result.pipeline_class}: {result.scheduler}, {result.resolution} px by default, "
        f"prompts of {result.max_length} tokens; tokenizer and {result.manifest.name} beside them"
    )
    _say(
        f"  verified: diffusers and the exported form paint the same image ({result.steps} steps, "
        f"guidance {result.guidance:g}), max |pixel diff| {result.max_abs_diff:.1e} "
        f"(limit {result.tolerance:.1e}, pixels in [0, 1])"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
