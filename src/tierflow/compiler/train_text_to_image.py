"""Train tierflow's text-to-image base model on procedural scenes and export it to ONNX.

    python -m tierflow.compiler.train_text_to_image --out DIR [--minutes 35 | --steps N] [--seed 0]

writes ``DIR/text_encoder.onnx``, ``DIR/denoiser.onnx`` (the contract is in
:mod:`tierflow.runtime.flow_sampler`, which samples from them with ONNX Runtime alone),
``DIR/training.json`` (the run: seed, steps, loss curve, wall time, parameter counts) and a torch
checkpoint (``DIR/checkpoint.pt`` unless ``--checkpoint`` says where).

**Method: conditional flow matching (rectified flow) in pixel space, 64 x 64.** A training
example is an image ``x1`` in [-1, 1] rendered fresh by :func:`tierflow.model.scenes.render`, its
prompt, Gaussian noise ``x0`` and a time ``t`` drawn logit-normal (SD3's choice: most weight on the
middle of the path); the denoiser sees ``x_t = (1 - t) x0 + t x1`` and learns the velocity
``x1 - x0`` (mean squared error). Sampling integrates ``dx/dt = v(x, t, text)`` from noise at
``t = 0`` to the image at ``t = 1`` with Euler steps. The text is dropped (all padding tokens) for
10 % of the examples, so one network gives both the conditional and the unconditional velocity,
and sampling uses classifier-free guidance. An exponential moving average of the weights is what
gets exported.

**Data.** Scene ``i`` of a run comes from the random stream ``[0, seed, i]`` (the whole grammar of
:func:`~tierflow.model.scenes.random_scene`: one to three objects, day and night, cracks); its
prompt is :func:`~tierflow.model.scenes.prompt_of`'s, except that each default it says or leaves
out (the main kind's default background, "large" in several-object prompts, "in the center" for a
lone object) is flipped for a third of the scenes, so that "a blue truck on the left" reads like
"a blue truck on the left on a road"; a variant is used only if
:func:`~tierflow.model.scenes.parse_prompt` reads it back to the same scene. Rendered
scenes go into a pool; each step renders ``batch / reuse`` new ones and draws its batch from the
pool, so rendering (~3 ms a scene) does not dominate a step.

**Architecture** (sizes in :func:`parameter_counts`):

- text encoder: word embedding (the 100-odd words of :data:`~tierflow.model.scenes.VOCABULARY`)
  + learned positions, a learned summary token in front, two pre-norm transformer layers (masked
  self-attention over the words); outputs per-token features, the summary token's output as the
  pooled vector, and the word mask.
- denoiser: the 64 px image and two coordinate channels (so that "left" and "right" have
  somewhere to live) folded 2 x 2 into channels (space to depth, lossless: 20 channels at 32 px),
  a UNet at 32, 16 and 8 px with 64, 96 and 128 channels, and the output unfolded back to
  3 x 64 x 64 (depth to space). Residual blocks have their second group norm modulated (adaptive
  group norm, FiLM) by ``SiLU(time embedding + pooled text)``; cross-attention from the pixels to
  the words (and a learned null word, so that a prompt without words still attends to something)
  follows the 16 px blocks, self-attention plus cross-attention the 8 px blocks. Upsampling is a
  1 x 1 channel reduction then nearest-neighbour x 2. Folding instead of a 64 px level halves the
  cost of a step on the CPU (no 64 px convolutions, no attention over 256 pixels), so the same
  training time makes twice the steps.

Training runs on the CPU, bf16 autocast where the processor has it (AMX), on ``--threads``
threads (default 1). ``--steps`` fixes the run exactly (the learning-rate schedule follows the
step count); ``--minutes`` lets the schedule follow the clock so that the run ends on time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tierflow.errors import InvalidInputError
from tierflow.model import metadata as md
from tierflow.model.scenes import (
    BACKGROUNDS_OF,
    MAX_TOKENS,
    PAD_ID,
    VOCABULARY,
    Background,
    Lighting,
    Position,
    Scene,
    Size,
    parse_prompt,
    prompt_of,
    random_scene,
    render,
)
from tierflow.runtime.flow_sampler import (
    DEFAULT_GUIDANCE,
    DENOISER_FILE,
    DENOISER_INPUTS,
    RESOLUTION,
    TEXT_ENCODER_FILE,
    TEXT_OUTPUTS,
    TOKENS,
    VELOCITY,
    T,
    X,
    prompt_tokens,
)
from tierflow.types.models import ModelKind

TRAIN_STREAM = 0
TEXT_DIM = 128
TEXT_LAYERS = 2
TEXT_HEADS = 4
FOLD = 2  # space to depth: 64 px images are 2 x 2-folded to 32 px x 20 channels
CHANNELS = (64, 96, 128)  # at 32, 16 and 8 px
COND_DIM = 256
TIME_DIM = 128
ATTN_HEADS = 4
GROUPS = 8
DROP_TEXT = 0.1
VARIANT = 1 / 3
TRAINING_FILE = "training.json"
CHECKPOINT_FILE = "checkpoint.pt"

# The phrases of prompt_of (its output is checked to be describe(scene) in the tests).
_BACKGROUND_PHRASE = {
    Background.ROAD: "on a road",
    Background.GRASS: "on grass",
    Background.SAND: "on sand",
    Background.CONCRETE: "in front of a concrete wall",
    Background.BRICK: "in front of a brick wall",
}
_POSITION_PHRASE = {
    Position.LEFT: "on the left",
    Position.CENTER: "in the center",
    Position.RIGHT: "on the right",
}


# --- data --------------------------------------------------------------------------------------


def describe(scene: Scene, background: bool = True, large: bool = True, center: bool = False) -> str:
    """A prompt for ``scene``: :func:`~tierflow.model.scenes.prompt_of`'s with the defaults it
    says (True, True, False); ``background=False`` leaves out the main kind's default background,
    ``large=False`` every "large", ``center=True`` says "in the center" of a lone object too."""
    single = len(scene.objects) == 1
    phrases = []
    for i, ob in enumerate(scene.objects):
        words = [str(ob.size)] if ob.size is Size.SMALL or (large and not single) else []
        words += [str(ob.colour), str(ob.kind)]
        text = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
        if scene.crack and i == scene.cracked_index:
            text += " with a crack"
        if not single or ob.position is not Position.CENTER or center:
            text += " " + _POSITION_PHRASE[ob.position]
        phrases.append(text)
    text = " and ".join(phrases)
    if background or scene.background is not BACKGROUNDS_OF[scene.main.kind][0]:
        text += (" " if single else ", ") + _BACKGROUND_PHRASE[scene.background]
    if scene.lighting is Lighting.NIGHT:
        text += " at night"
    return text


def prompt_variant(scene: Scene, rng: np.random.Generator) -> str:
    """A training prompt for ``scene``: each default (background, "large", a lone object's
    center) left out or said with probability :data:`VARIANT`; only a text that
    :func:`~tierflow.model.scenes.parse_prompt` reads back to ``scene`` is used, else the canonical one."""
    flags = rng.random(3) < VARIANT
    text = describe(scene, background=not flags[0], large=not flags[1], center=bool(flags[2]))
    return text if parse_prompt(text).scene == scene else prompt_of(scene)


def scene_at(stream: int, seed: int, index: int) -> tuple[Scene, int, str]:
    """Scene ``index`` of a stream, the seed it is rendered with, and its prompt."""
    rng = np.random.default_rng([stream, seed, index])
    scene = random_scene(rng)
    render_seed = int(rng.integers(0, 2**31 - 1))
    return scene, render_seed, prompt_variant(scene, rng)


def token_ids(prompt: str) -> list[int]:
    """The word ids the text encoder reads for ``prompt`` (unknown words dropped)."""
    return [int(i) for i in prompt_tokens(prompt).ids]


class ScenePool:
    """Rendered training scenes: ``size`` of them, ``fresh`` replaced (oldest first) per draw."""

    def __init__(self, seed: int, size: int, fresh: int, stream: int = TRAIN_STREAM) -> None:
        if size < 1 or not 1 <= fresh <= size:
            raise InvalidInputError(f"pool size {size} and fresh scenes {fresh} do not fit")
        self.seed, self.stream, self.size, self.fresh = seed, stream, size, fresh
        self.images = np.empty((size, RESOLUTION, RESOLUTION, 3), np.uint8)
        self.tokens = np.empty((size, MAX_TOKENS), np.int64)
        self.rendered = 0
        self.rng = np.random.default_rng([stream, seed, 2**31])
        self.render_s = 0.0
        for _ in range(size):
            self._add()

    def _add(self) -> None:
        t0 = time.perf_counter()
        scene, render_seed, prompt = scene_at(self.stream, self.seed, self.rendered)
        slot = self.rendered % self.size
        self.images[slot] = render(scene, RESOLUTION, render_seed).image
        self.tokens[slot] = token_ids(prompt)
        self.rendered += 1
        self.render_s += time.perf_counter() - t0

    def draw(self, batch: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """``fresh`` new scenes into the pool, then ``batch`` scenes drawn from it."""
        for _ in range(self.fresh):
            self._add()
        idx = self.rng.choice(self.size, size=batch, replace=batch > self.size)
        return self.images[idx], self.tokens[idx]


def to_model_space(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
    return x / 127.5 - 1.0


# --- the model ---------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention in plain MatMul / Softmax ops; ``bias`` [N, 1, 1, Lk] is added to the
    scores (large negative = masked key)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n, lq, c = x.shape
        lk = kv.shape[1]
        h, d = self.heads, c // self.heads
        q = self.q(x).reshape(n, lq, h, d).transpose(1, 2)
        k = self.k(kv).reshape(n, lk, h, d).transpose(1, 2)
        v = self.v(kv).reshape(n, lk, h, d).transpose(1, 2)
        # plain ops: a clean ONNX graph, and on one CPU core (bf16) faster than the fused kernel
        scores = torch.matmul(q * (1.0 / math.sqrt(d)), k.transpose(2, 3))
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o(out.transpose(1, 2).reshape(n, lq, c))  # type: ignore[no-any-return]


def _mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """[N, L] with 1 = attend -> additive score bias [N, 1, 1, L]."""
    return ((1.0 - mask) * -1e4)[:, None, None, :]


class TextLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.norm1(h)
        h = h + self.attn(x, x, bias)
        return h + self.mlp(self.norm2(h))  # type: ignore[no-any-return]


class TextEncoder(nn.Module):
    """tokens int64 [N, L] -> (text [N, L, D], pooled [N, D], text_mask [N, L])."""

    def __init__(self, dim: int = TEXT_DIM, layers: int = TEXT_LAYERS, heads: int = TEXT_HEADS) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), dim)
        self.summary = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, MAX_TOKENS + 1, dim) * 0.02)
        self.layers = nn.ModuleList(TextLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = (tokens != PAD_ID).to(torch.float32)
        words = self.embed(tokens)
        summary = self.summary.expand(words.shape[0], -1, -1)
        h = torch.cat([summary, words], dim=1) + self.pos
        bias = _mask_bias(torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1))
        for layer in self.layers:
            h = layer(h, bias)
        h = self.norm(h)
        return h[:, 1:], h[:, 0], mask


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> adaptive GN (scale, shift from the conditioning) -> SiLU -> conv, + skip."""

    def __init__(self, c_in: int, c_out: int, cond: int = COND_DIM) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(cond, 2 * c_out)
        self.norm2 = nn.GroupNorm(GROUPS, c_out, affine=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        if self.conv2.bias is not None:
            nn.init.zeros_(self.conv2.bias)
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h  # type: ignore[no-any-return]


class AttnBlock(nn.Module):
    """Self-attention over the pixels (optional), then cross-attention from the pixels to the
    words and a learned null word (so that a prompt without words attends to something)."""

    def __init__(
        self, channels: int, text_dim: int = TEXT_DIM, heads: int = ATTN_HEADS, self_attention: bool = True
    ) -> None:
        super().__init__()
        self.self_attn: Attention | None = Attention(channels, heads) if self_attention else None
        self.norm1 = nn.GroupNorm(GROUPS, channels) if self_attention else None
        self.norm2 = nn.GroupNorm(GROUPS, channels)
        self.cross = Attention(channels, heads, text_dim)
        self.null = nn.Parameter(torch.zeros(1, 1, text_dim))
        if self.self_attn is not None:
            nn.init.zeros_(self.self_attn.o.weight)
        nn.init.zeros_(self.cross.o.weight)

    def forward(self, x: torch.Tensor, text: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        if self.self_attn is not None and self.norm1 is not None:
            seq = self.norm1(x).flatten(2).transpose(1, 2)
            x = x + self.self_attn(seq, seq).transpose(1, 2).reshape(n, c, hgt, wid)
        seq = self.norm2(x).flatten(2).transpose(1, 2)
        words = torch.cat([self.null.expand(n, -1, -1), text], dim=1)
        out = self.cross(seq, words, bias).transpose(1, 2).reshape(n, c, hgt, wid)
        return x + out  # type: ignore[no-any-return]


class Denoiser(nn.Module):
    """(x [N, 3, 64, 64], t [N], text, pooled, text_mask) -> velocity [N, 3, 64, 64].

    The image and two coordinate channels are folded 2 x 2 into channels (space to depth: 20
    channels at 32 px, nothing lost), run through a UNet at 32, 16 and 8 px and unfolded again."""

    def __init__(self, channels: Sequence[int] = CHANNELS, text_dim: int = TEXT_DIM) -> None:
        super().__init__()
        c0, c1, c2 = channels
        half = TIME_DIM // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half))
        axis = torch.linspace(-1, 1, RESOLUTION)
        ys, xs = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None])
        self.time = nn.Sequential(nn.Linear(TIME_DIM, COND_DIM), nn.SiLU(), nn.Linear(COND_DIM, COND_DIM))
        self.text_proj = nn.Linear(text_dim, COND_DIM)
        self.stem = nn.Conv2d(5 * FOLD * FOLD, c0, 3, padding=1)
        self.d0 = ResBlock(c0, c0)
        self.down0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.d1 = ResBlock(c0, c1)
        self.x1 = AttnBlock(c1, text_dim, self_attention=False)
        self.down1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.d2 = ResBlock(c1, c2)
        self.a2 = AttnBlock(c2, text_dim)
        self.mid = ResBlock(c2, c2)
        self.u2 = ResBlock(2 * c2, c2)
        self.ua2 = AttnBlock(c2, text_dim)
        self.up1 = nn.Conv2d(c2, c1, 1)
        self.u1 = ResBlock(2 * c1, c1)
        self.ux1 = AttnBlock(c1, text_dim, self_attention=False)
        self.up0 = nn.Conv2d(c1, c0, 1)
        self.u0 = ResBlock(2 * c0, c0)
        self.out_norm = nn.GroupNorm(GROUPS, c0)
        self.out = nn.Conv2d(c0, 3 * FOLD * FOLD, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        freqs: torch.Tensor = self.freqs  # type: ignore[assignment]
        coords: torch.Tensor = self.coords  # type: ignore[assignment]
        args = (t * 1000.0)[:, None] * freqs[None, :]
        temb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        c = F.silu(self.time(temb) + self.text_proj(pooled))
        bias = _mask_bias(torch.cat([torch.ones_like(text_mask[:, :1]), text_mask], dim=1))
        h = F.pixel_unshuffle(torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1), FOLD)
        h0 = self.d0(self.stem(h), c)
        h1 = self.x1(self.d1(self.down0(h0), c), text, bias)
        h2 = self.a2(self.d2(self.down1(h1), c), text, bias)
        u = self.ua2(self.u2(torch.cat([self.mid(h2, c), h2], dim=1), c), text, bias)
        u = F.interpolate(self.up1(u), scale_factor=2.0, mode="nearest")
        u = self.ux1(self.u1(torch.cat([u, h1], dim=1), c), text, bias)
        u = F.interpolate(self.up0(u), scale_factor=2.0, mode="nearest")
        u = self.u0(torch.cat([u, h0], dim=1), c)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(u))), FOLD)


class TextToImage(nn.Module):
    """The text encoder and the denoiser, trained together."""

    def __init__(self) -> None:
        super().__init__()
        self.text_encoder = TextEncoder()
        self.denoiser = Denoiser()

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text, pooled, mask = self.text_encoder(tokens)
        return self.denoiser(x, t, text, pooled, mask)  # type: ignore[no-any-return]


def build_model(seed: int = 0) -> TextToImage:
    torch.manual_seed(seed)
    return TextToImage()


def parameter_counts(model: TextToImage) -> dict[str, int]:
    """Parameters of each component and in all."""
    enc = sum(int(p.numel()) for p in model.text_encoder.parameters())
    den = sum(int(p.numel()) for p in model.denoiser.parameters())
    return {"text_encoder": enc, "denoiser": den, "total": enc + den}


# --- training ----------------------------------------------------------------------------------


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of the peak at ``progress`` 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def bf16_available() -> bool:
    """Whether bf16 autocast is fast here (oneDNN with AMX or AVX-512 bf16)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(  # type: ignore[no-untyped-call]
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def flow_loss(
    model: TextToImage, images: torch.Tensor, tokens: torch.Tensor, gen: torch.Generator, bf16: bool
) -> torch.Tensor:
    """The rectified-flow loss of one batch (the text dropped for :data:`DROP_TEXT` of it)."""
    n = images.shape[0]
    drop = torch.rand(n, generator=gen) < DROP_TEXT
    tokens = torch.where(drop[:, None], torch.full_like(tokens, PAD_ID), tokens)
    noise = torch.randn(images.shape, generator=gen)
    t = torch.sigmoid(torch.randn(n, generator=gen))
    tb = t[:, None, None, None]
    xt = (1.0 - tb) * noise + tb * images
    target = images - noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = model(xt, t, tokens)
    return F.mse_loss(pred.float(), target)


def train(
    steps: int = 0,
    minutes: float = 35.0,
    batch: int = 32,
    seed: int = 0,
    lr: float = 1e-3,
    threads: int = 1,
    log_every: int = 100,
    reuse: int = 2,
    pool: int = 512,
    ema_decay: float = 0.999,
    bf16: bool | None = None,
) -> tuple[TextToImage, TextToImage, dict[str, Any]]:
    """Train; returns the model, its moving average (both in eval mode) and a summary of the run.

    ``steps`` > 0 fixes the run (repeatable for a seed on one thread); else it lasts ``minutes``."""
    if batch < 1 or steps < 0 or (steps == 0 and minutes <= 0):
        raise InvalidInputError(
            f"need batch >= 1 and steps > 0 or minutes > 0 (got {batch}, {steps}, {minutes})"
        )
    torch.set_num_threads(threads)
    use_bf16 = bf16_available() if bf16 is None else bf16
    model = build_model(seed)
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    data = ScenePool(seed, max(pool, batch), max(1, batch // max(reuse, 1)))
    warmup = 100 if steps == 0 else min(100, max(steps // 10, 1))
    budget_s = minutes * 60.0
    curve: list[dict[str, float]] = []
    window: list[float] = []
    step = 0
    while True:
        elapsed = time.perf_counter() - started
        progress = step / steps if steps else elapsed / budget_s
        if (steps and step >= steps) or (not steps and progress >= 1.0 and step > warmup):
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, lr, warmup)
        images, tokens = data.draw(batch)
        loss = flow_loss(model, to_model_space(images), torch.from_numpy(tokens), gen, use_bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - d)
        window.append(float(loss.detach()))
        step += 1
        if log_every and step % log_every == 0:
            elapsed = time.perf_counter() - started
            mean = float(np.mean(window))
            curve.append({"step": step, "loss": round(mean, 5), "minutes": round(elapsed / 60, 2)})
            print(
                f"step {step} lr {opt.param_groups[0]['lr']:.2e} loss {mean:.4f} [{elapsed / 60:.1f} min, "
                f"{step / elapsed:.2f} steps/s, render {data.render_s / elapsed:.0%}]",
                flush=True,
            )
            window = []
    if window:
        curve.append(
            {
                "step": step,
                "loss": round(float(np.mean(window)), 5),
                "minutes": round((time.perf_counter() - started) / 60, 2),
            }
        )
    model.eval()
    ema.eval()
    wall = time.perf_counter() - started
    run: dict[str, Any] = {
        "method": "conditional flow matching (rectified flow), pixel space, classifier-free guidance",
        "seed": seed,
        "steps": step,
        "batch": batch,
        "lr": lr,
        "ema_decay": ema_decay,
        "threads": threads,
        "bf16_autocast": use_bf16,
        "scenes_rendered": data.rendered,
        "examples_seen": step * batch,
        "wall_s": round(wall, 1),
        "render_s": round(data.render_s, 1),
        "parameters": parameter_counts(model),
        "loss_curve": curve,
        "loss_first": curve[0]["loss"] if curve else None,
        "loss_last": curve[-1]["loss"] if curve else None,
    }
    return model, ema, run


# --- export ------------------------------------------------------------------------------------


def config_of(component: str, guidance: float = DEFAULT_GUIDANCE) -> dict[str, Any]:
    """The configuration stored in each ONNX file's metadata (``tierflow.config``); the
    denoiser's holds the default guidance scale of the sampler."""
    base: dict[str, Any] = {
        "component": component,
        "method": "rectified flow: x_t = (1 - t) * noise + t * image, velocity = image - noise, t in [0, 1]",
        "resolution": RESOLUTION,
        "tokens": MAX_TOKENS,
        "text_dim": TEXT_DIM,
    }
    if component == "text_encoder":
        return base | {"layers": TEXT_LAYERS, "heads": TEXT_HEADS, "vocabulary": list(VOCABULARY)}
    return base | {"channels": list(CHANNELS), "cond_dim": COND_DIM, "guidance": guidance}


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    component: str,
    training: dict[str, Any],
    opset: int,
    guidance: float,
) -> None:
    import onnx

    tmp = path.with_suffix(path.suffix + ".tmp")
    axes = {name: {0: "batch"} for name in (*inputs, *outputs)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is wanted: a cleaner graph
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    md.write_metadata(
        proto,
        kind=ModelKind.GENERIC,
        input_size=RESOLUTION,
        resolutions=[RESOLUTION],
        dims={"batch": 1},
        config=config_of(component, guidance),
        training=training,
    )
    proto.doc_string = f"tierflow text-to-image {component} (flow matching, {RESOLUTION} px)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def export_onnx(
    model: TextToImage,
    out: Path,
    training: dict[str, Any] | None = None,
    opset: int = 17,
    guidance: float = DEFAULT_GUIDANCE,
) -> float:
    """Write ``out/text_encoder.onnx`` and ``out/denoiser.onnx``; returns the largest difference
    between ONNX Runtime and torch on a check batch."""
    import onnxruntime as ort

    model = model.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in (training or {}).items() if k != "loss_curve"}
    tokens = torch.tensor(
        [token_ids("a red car on the left and a blue ball on the right, on a road"), [PAD_ID] * MAX_TOKENS]
    )
    _export(
        model.text_encoder,
        (tokens,),
        out / TEXT_ENCODER_FILE,
        [TOKENS],
        list(TEXT_OUTPUTS),
        "text_encoder",
        summary,
        opset,
        guidance,
    )
    with torch.no_grad():
        text, pooled, mask = model.text_encoder(tokens)
        x = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.3, 0.8])
        want = model.denoiser(x, t, text, pooled, mask)
    _export(
        model.denoiser,
        (x, t, text, pooled, mask),
        out / DENOISER_FILE,
        list(DENOISER_INPUTS),
        [VELOCITY],
        "denoiser",
        summary,
        opset,
        guidance,
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc = ort.InferenceSession(str(out / TEXT_ENCODER_FILE), so, providers=["CPUExecutionProvider"])
    den = ort.InferenceSession(str(out / DENOISER_FILE), so, providers=["CPUExecutionProvider"])
    feats = dict(zip(TEXT_OUTPUTS, enc.run(list(TEXT_OUTPUTS), {TOKENS: tokens.numpy()}), strict=True))
    got = den.run([VELOCITY], {X: x.numpy(), T: t.numpy(), **feats})[0]
    return float(np.abs(np.asarray(got) - want.numpy()).max())


def save_checkpoint(path: Path, model: TextToImage, ema: TextToImage, run: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "run": json.dumps(run),
            "config": {c: config_of(c) for c in ("text_encoder", "denoiser")},
        },
        path,
    )


def load_checkpoint(path: Path, which: str = "ema") -> tuple[TextToImage, dict[str, Any]]:
    saved = torch.load(path, weights_only=True)
    model = TextToImage()
    model.load_state_dict(saved[which])
    model.eval()
    return model, json.loads(saved["run"])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the ONNX files and training.json")
    ap.add_argument("--minutes", type=float, default=35.0, help="training time (ignored with --steps)")
    ap.add_argument("--steps", type=int, default=0, help="exact number of optimizer steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", type=int, default=2, help="draws per rendered scene (on average)")
    ap.add_argument("--pool", type=int, default=512, help="rendered scenes kept to draw batches from")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 even where bf16 is fast")
    ap.add_argument(
        "--guidance", type=float, default=DEFAULT_GUIDANCE, help="the sampler's default guidance scale"
    )
    ap.add_argument("--checkpoint", type=Path, help=f"torch checkpoint (default: OUT/{CHECKPOINT_FILE})")
    ap.add_argument(
        "--export-only", type=Path, metavar="CHECKPOINT", help="skip training: export a checkpoint"
    )
    args = ap.parse_args(argv)
    if args.export_only:
        ema, run = load_checkpoint(args.export_only)
    else:
        model, ema, run = train(
            args.steps,
            args.minutes,
            args.batch,
            args.seed,
            args.lr,
            args.threads,
            args.log_every,
            args.reuse,
            args.pool,
            bf16=False if args.no_bf16 else None,
        )
        counts = run["parameters"]
        print(
            f"trained {run['steps']} steps ({run['examples_seen']:,} examples) "
            f"in {run['wall_s'] / 60:.1f} min; parameters: text encoder {counts['text_encoder']:,}, "
            f"denoiser {counts['denoiser']:,}",
            flush=True,
        )
        save_checkpoint(args.checkpoint or args.out / CHECKPOINT_FILE, model, ema, run)
    run["default_guidance"] = args.guidance
    error = export_onnx(ema, args.out, run, guidance=args.guidance)
    run["onnx_max_abs_error"] = error
    (args.out / TRAINING_FILE).write_text(json.dumps(run, indent=1) + "\n")
    sizes = {f: (args.out / f).stat().st_size for f in (TEXT_ENCODER_FILE, DENOISER_FILE)}
    print(
        f"exported {args.out}: "
        + ", ".join(f"{f} {s / 1e6:.2f} MB" for f, s in sizes.items())
        + f"; max |ORT - torch| = {error:.2e}",
        flush=True,
    )
    if error > 1e-3:
        raise SystemExit(f"ONNX Runtime disagrees with torch by {error:.2e} (> 1e-3)")


if __name__ == "__main__":
    main()
