#!/usr/bin/env python3
"""Generate the ground-truth fixtures in tests/fixtures/ from the real PyTorch models.

Run by hand (never in CI), inside the virtualenv described by
tools/requirements-fixtures.txt:

    /work/venv/bin/python tools/make_fixtures.py            # every case
    /work/venv/bin/python tools/make_fixtures.py relu sharded   # some cases

Every case gets its own directory tests/fixtures/<case>/ holding

  config.json          transformers' own format (written by save_pretrained),
                       except `config-4x`, hand-written in the 4.x style
  weights              model.safetensors (or shards + model.safetensors.index.json);
                       HF names with the `convnextv2.` prefix ("hf"), without it
                       ("hf-bare"), or timm names ("timm")
  pixel_values.npy     float32 (B, num_channels, H, W)
  expected.npz         float32 outputs of the float32 model:
                         logits            (B, num_labels); the pooled output when
                                           there is no classifier
                         pooler_output     (B, C_last)
                         last_hidden_state (B, C_last, h, w)
                         hidden_states_<i> NCHW; 0 = embeddings, i = stage i
                       and `<name>_f64` float64 versions of the same outputs from a
                       float64 copy of the model (same weights, pixels cast to
                       float64): always for logits and pooler_output, for every
                       output when the file stays under ~1 MB
  meta.json            case description, versions, f32-vs-f64 deviations, ...

Everything random comes from np.random.default_rng(<seed of the case>): first
every parameter, in the model's module order, then the pixel values.
HF initialises GRN to zero and LayerNorm to the identity, which would hide
bugs, so *every* parameter is drawn:

  conv / linear weight   N(0,1) / sqrt(fan_in)
  conv / linear bias     0.1 * N(0,1)
  LayerNorm weight       1 + 0.2 * N(0,1)
  LayerNorm bias         0.2 * N(0,1)
  GRN weight and bias    0.5 * N(0,1)

Some cases then rescale selected tensors (see their descriptions).

The output is deterministic: re-running with the same package versions gives
byte-identical files.
"""

import argparse
import copy
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

# Never reach for the hub: every model here is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

import safetensors
import safetensors.torch
import timm
import transformers
from timm.models.convnext import ConvNeXt
from transformers import ConvNextV2Config, ConvNextV2ForImageClassification, ConvNextV2Model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
ATTO_CONFIG = os.path.join(REPO_ROOT, "models", "facebook", "convnextv2-atto-1k-224")

# Store every output's float64 twin when expected.npz stays below this size.
F64_ALL_BUDGET_BYTES = 1_000_000
# f32-vs-f64 relative deviation (max|f32 - f64| / max|f64|) that we warn about / refuse.
REL_WARN = 1e-5
REL_FAIL = 1e-3


# --------------------------------------------------------------------------------------
# Parameter randomisation
# --------------------------------------------------------------------------------------

def _is_grn(module):
    # transformers' ConvNextV2GRN and timm's GlobalResponseNorm
    return type(module).__name__ in ("ConvNextV2GRN", "GlobalResponseNorm")


def randomize_parameters(model: nn.Module, rng: np.random.Generator) -> None:
    """Overwrite every parameter of `model` (HF or timm ConvNeXt V2) from `rng`.

    Values are drawn in float64 and rounded to the parameter's dtype.  Fails if
    the model has a parameterised module of an unknown kind or any state that is
    not a parameter (which would then escape randomisation).
    """
    param_names = {name for name, _ in model.named_parameters()}
    state_names = set(model.state_dict().keys())
    if param_names != state_names:
        raise RuntimeError(f"state not covered by parameters: {sorted(state_names ^ param_names)}")

    seen = 0
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            shape = tuple(param.shape)
            normal = rng.standard_normal(shape)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if p_name == "weight":
                    fan_in = int(np.prod(shape[1:]))
                    value = normal / np.sqrt(fan_in)
                else:
                    value = 0.1 * normal
            elif isinstance(module, nn.LayerNorm):  # includes the channels-first subclasses
                value = 1.0 + 0.2 * normal if p_name == "weight" else 0.2 * normal
            elif _is_grn(module):
                value = 0.5 * normal
            else:
                raise RuntimeError(f"don't know how to randomise {mod_name}.{p_name} ({type(module).__name__})")
            with torch.no_grad():
                param.copy_(torch.from_numpy(value).to(param.dtype))
            seen += 1
    assert seen == len(param_names), (seen, len(param_names))


def scale_params(model: nn.Module, names, factor: float) -> None:
    """Multiply the named parameters of `model` in place by `factor`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].mul_(factor)


def layer_norms(model: nn.Module):
    """(name, module) of every LayerNorm of the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


def layer_norm_input_variance(model: nn.Module, pixel_values: torch.Tensor):
    """Variance, over the normalised (channel) axis, of every LayerNorm's input.

    Returns {name: {"mean": ..., "min": ..., "max": ...}} where mean/min/max run
    over all normalised vectors (batch x spatial positions).
    """
    stats = {}
    hooks = []

    def hook_for(name, module):
        def hook(_module, inputs):
            x = inputs[0].detach().double()
            channel_axis = 1 if getattr(module, "data_format", "channels_last") == "channels_first" else -1
            var = x.var(dim=channel_axis, unbiased=False)
            stats[name] = {"mean": var.mean().item(), "min": var.min().item(), "max": var.max().item()}
        return hook

    for name, module in layer_norms(model):
        hooks.append(module.register_forward_pre_hook(hook_for(name, module)))
    try:
        with torch.no_grad():
            model(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    return stats


# --------------------------------------------------------------------------------------
# Running the HF model
# --------------------------------------------------------------------------------------

def hf_outputs(model: nn.Module, pixel_values: torch.Tensor) -> dict:
    """All outputs of an HF ConvNextV2ForImageClassification / ConvNextV2Model, as numpy.

    For the classifier, logits and hidden states come from the classification
    forward, pooler_output / last_hidden_state from the inner `model.convnextv2`;
    both runs are checked to agree exactly.  A bare ConvNextV2Model has logits
    equal to its pooled output (as HF's classifier with num_labels 0 would).
    """
    model.eval()
    with torch.no_grad():
        if isinstance(model, ConvNextV2ForImageClassification):
            out = model(pixel_values=pixel_values, output_hidden_states=True)
            base = model.convnextv2(pixel_values, output_hidden_states=True)
            logits = out.logits
            assert torch.equal(model.classifier(base.pooler_output), logits)
            assert len(out.hidden_states) == len(base.hidden_states)
            assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, base.hidden_states))
            hidden_states = out.hidden_states
        else:
            base = model(pixel_values, output_hidden_states=True)
            logits = base.pooler_output
            hidden_states = base.hidden_states
    num_stages = model.config.num_stages
    assert len(hidden_states) == num_stages + 1, len(hidden_states)
    assert torch.equal(hidden_states[-1], base.last_hidden_state)

    outputs = {
        "logits": logits,
        "pooler_output": base.pooler_output,
        "last_hidden_state": base.last_hidden_state,
    }
    for i, h in enumerate(hidden_states):
        outputs[f"hidden_states_{i}"] = h
    return {k: v.detach().cpu().numpy() for k, v in outputs.items()}


def f64_twin(model: nn.Module) -> nn.Module:
    """A float64 copy of `model` with exactly the same (float32-representable) weights."""
    return copy.deepcopy(model).double().eval()


# --------------------------------------------------------------------------------------
# Writing a case
# --------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    description: str
    seed: int
    build: Callable  # (Case, rng, out_dir) -> CaseResult
    extra: dict = field(default_factory=dict)


@dataclass
class CaseResult:
    model: nn.Module           # the float32 HF model that produced the outputs
    pixel_values: torch.Tensor  # float32
    naming: str                # "hf" | "hf-bare" | "timm"
    weights: list              # weight file names, relative to the case directory
    weights_dtype: str = "float32"
    f64_model: nn.Module = None  # defaults to f64_twin(model)
    meta: dict = field(default_factory=dict)  # case-specific meta.json entries
    uses_timm: bool = False


def max_abs(a):
    return float(np.max(np.abs(a))) if a.size else 0.0


def write_case(case: Case, out_dir: str, result: CaseResult) -> dict:
    pv32 = result.pixel_values.float().contiguous()
    f32 = hf_outputs(result.model, pv32)
    f64_model = result.f64_model if result.f64_model is not None else f64_twin(result.model)
    f64 = hf_outputs(f64_model, pv32.double())

    # Which outputs also get a float64 twin in expected.npz.
    f32_bytes = sum(v.astype(np.float32).nbytes for v in f32.values())
    all_f64 = f32_bytes * 3 < F64_ALL_BUDGET_BYTES
    f64_names = list(f32) if all_f64 else ["logits", "pooler_output"]

    arrays = {k: v.astype(np.float32) for k, v in f32.items()}
    arrays.update({f"{k}_f64": f64[k].astype(np.float64) for k in f64_names})
    np.savez(os.path.join(out_dir, "expected.npz"), **arrays)
    np.save(os.path.join(out_dir, "pixel_values.npy"), pv32.numpy())

    dev_abs, dev_rel, out_max = {}, {}, {}
    for k in f32:
        d = max_abs(f32[k].astype(np.float64) - f64[k])
        m = max_abs(f64[k])
        dev_abs[k], out_max[k] = d, m
        dev_rel[k] = d / m if m > 0 else d
    worst = max(dev_rel.values())
    if worst > REL_FAIL:
        raise RuntimeError(f"{case.name}: float32 and float64 runs disagree (max rel {worst:.3g})")

    batch, _, height, width = pv32.shape
    meta = {
        "case": case.name,
        "description": case.description,
        "seed": case.seed,
        "batch": int(batch),
        "height": int(height),
        "width": int(width),
        "naming": result.naming,
        "weights": result.weights,
        "weights_dtype": result.weights_dtype,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    if result.uses_timm:
        meta["timm_version"] = timm.__version__
    meta["outputs"] = list(f32)
    meta["outputs_f64"] = [f"{k}_f64" for k in f64_names]
    meta["f32_vs_f64_max_abs"] = dev_abs
    meta["f32_vs_f64_max_rel"] = dev_rel
    meta["output_max_abs"] = out_max
    meta.update(result.meta)
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    return {
        "case": case.name,
        "naming": result.naming,
        "dtype": result.weights_dtype,
        "input": "x".join(str(int(s)) for s in pv32.shape),
        "labels": f32["logits"].shape[1],
        "params": sum(p.numel() for p in result.model.parameters()),
        "bytes": sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)),
        "max_rel": worst,
    }


def verify_reload(out_dir: str, meta: dict) -> float:
    """Reload the case from disk as a consumer would and re-run it.

    HF namings go through from_pretrained (local directory, float32); timm
    weights go into a fresh timm model.  Returns max |logits - expected logits|.
    """
    pv = torch.from_numpy(np.load(os.path.join(out_dir, "pixel_values.npy")))
    expected = np.load(os.path.join(out_dir, "expected.npz"))["logits"]
    with torch.no_grad():
        if meta["naming"] == "timm":
            tmodel = ConvNeXt(**meta["timm_args"]).eval()
            tmodel.load_state_dict(safetensors.torch.load_file(os.path.join(out_dir, meta["weights"][0])))
            logits = tmodel(pv)
        elif meta["naming"] == "hf-bare":
            model = ConvNextV2Model.from_pretrained(out_dir, dtype=torch.float32).eval()
            logits = model(pv).pooler_output
        else:
            model = ConvNextV2ForImageClassification.from_pretrained(out_dir, dtype=torch.float32).eval()
            logits = model(pv).logits
    return max_abs(logits.numpy().astype(np.float64) - expected)


# --------------------------------------------------------------------------------------
# Model builders
# --------------------------------------------------------------------------------------

def labels(n):
    return {i: f"class_{i}" for i in range(n)}


def hf_config(hidden_sizes, depths, num_labels, *, image_size=None, **kw):
    """A ConvNextV2Config for a custom (small) model, with readable class names."""
    id2label = labels(num_labels)
    cfg = dict(
        architectures=["ConvNextV2ForImageClassification"],
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        num_stages=len(depths),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        drop_path_rate=0.0,
    )
    if image_size is not None:
        cfg["image_size"] = image_size
    cfg.update(kw)
    return ConvNextV2Config(**cfg)


def new_classifier(config, rng):
    model = ConvNextV2ForImageClassification(config).eval()
    randomize_parameters(model, rng)
    return model


def pixels(rng, batch, channels, height, width, scale=1.0):
    x = rng.standard_normal((batch, channels, height, width)).astype(np.float32)
    return torch.from_numpy(x * np.float32(scale))


def simple_hf_case(config, batch, height, width):
    """Builder: a randomised ConvNextV2ForImageClassification saved with save_pretrained."""
    def build(case, rng, out_dir):
        model = new_classifier(config, rng)
        pv = pixels(rng, batch, config.num_channels, height, width)
        model.save_pretrained(out_dir, safe_serialization=True)
        return CaseResult(model, pv, "hf", ["model.safetensors"])
    return build


# ---- 1. the atto preset --------------------------------------------------------------

def build_atto(case, rng, out_dir):
    config = ConvNextV2Config.from_pretrained(ATTO_CONFIG)  # local directory, no hub
    model = new_classifier(config, rng)
    pv = pixels(rng, 2, 3, 224, 224)
    model.save_pretrained(out_dir, safe_serialization=True)
    return CaseResult(model, pv, "hf", ["model.safetensors"])


# ---- 6. no classifier ------------------------------------------------------------------

def build_no_classifier(case, rng, out_dir):
    config = hf_config([8, 16, 24, 32], [1, 1, 1, 1], 0, image_size=40)
    assert config.num_labels == 0
    model = new_classifier(config, rng)
    assert isinstance(model.classifier, nn.Identity)
    pv = pixels(rng, 2, 3, 40, 40)
    model.save_pretrained(out_dir, safe_serialization=True)
    return CaseResult(model, pv, "hf", ["model.safetensors"])


# ---- 7. final layer_norm_eps far from the default ---------------------------------------

def last_stage_scalable(model, prefix="convnextv2."):
    """Parameters whose common scaling by k scales the last stage's output by ~k.

    Downsampling conv (weight, bias), every block's depthwise-conv bias and
    pwconv2 (weight, bias): the block LayerNorm makes the rest scale-free.
    """
    stage = len(model.config.depths) - 1
    p = f"{prefix}encoder.stages.{stage}."
    names = [p + "downsampling_layer.1.weight", p + "downsampling_layer.1.bias"]
    for j in range(model.config.depths[stage]):
        names += [f"{p}layers.{j}.dwconv.bias", f"{p}layers.{j}.pwconv2.weight", f"{p}layers.{j}.pwconv2.bias"]
    return names


def build_layer_norm_eps(case, rng, out_dir):
    eps, target_var = 1e-2, 1e-2
    config = hf_config([8, 16, 24, 32], [1, 1, 2, 1], 6, image_size=32, layer_norm_eps=eps)
    model = new_classifier(config, rng)
    pv = pixels(rng, 2, 3, 32, 32)

    # Shrink the last stage so the pooled vector's variance (the final
    # LayerNorm's input) is about `eps`.
    final = "convnextv2.layernorm"
    var0 = layer_norm_input_variance(model, pv)[final]["mean"]
    k = float(np.sqrt(target_var / var0))
    scale_params(model, last_stage_scalable(model), k)
    stats = layer_norm_input_variance(model, pv)[final]

    tiny_eps = copy.deepcopy(model)
    tiny_eps.convnextv2.layernorm.eps = 1e-12
    with torch.no_grad():
        diff = (tiny_eps(pv).logits - model(pv).logits).abs().max().item()

    model.save_pretrained(out_dir, safe_serialization=True)
    return CaseResult(model, pv, "hf", ["model.safetensors"], meta={
        "last_stage_scale": k,
        "final_layernorm_input_variance": stats,
        "logits_diff_if_eps_1e-12": diff,
    })


# ---- 8. every LayerNorm sees a variance comparable to its eps ----------------------------

def build_small_activations(case, rng, out_dir):
    s = 1e-3  # activation scale: variances ~ s^2 = 1e-6 = the LayerNorm eps
    config = hf_config([8, 16, 24, 32], [1, 2, 1, 1], 5, image_size=32, layer_norm_eps=1e-6)
    model = new_classifier(config, rng)
    pv = pixels(rng, 2, 3, 32, 32, scale=s)

    # Keep the residual stream at scale s: every LayerNorm (but the final,
    # pooled one, which only feeds the classifier), every conv/linear bias (but
    # the classifier's) and every GRN bias is multiplied by s.  Weights of
    # convs, linears and GRN are scale-free and stay as drawn.
    final = "convnextv2.layernorm"
    small = []
    for name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{name}.{p_name}"
            if isinstance(module, nn.LayerNorm) and name != final:
                small.append(full)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and p_name == "bias" and name != "classifier":
                small.append(full)
            elif _is_grn(module) and p_name == "bias":
                small.append(full)
    scale_params(model, small, s)

    # A 7x7 depthwise conv on the 4x4, 2x2, 1x1 maps of the late stages sees
    # only part of its taps, which shrinks its output; rescale each block's
    # dwconv (weight and bias), in order, so its LayerNorm input variance is s^2.
    calibration = {}
    for name, _ in layer_norms(model):
        if name.endswith(".layernorm") and ".layers." in name:
            var = layer_norm_input_variance(model, pv)[name]["mean"]
            dw = name[: -len("layernorm")] + "dwconv"
            k = float(np.sqrt(s * s / var))
            scale_params(model, [dw + ".weight", dw + ".bias"], k)
            calibration[dw] = k

    stats = layer_norm_input_variance(model, pv)
    for name, st in stats.items():
        if not 1e-7 <= st["mean"] <= 1e-5:
            raise RuntimeError(f"{case.name}: LayerNorm {name} input variance {st['mean']:.3g} not within 10x of 1e-6")

    diffs = {}
    with torch.no_grad():
        ref = model(pv).logits
        for eps in (1e-12, 0.0):
            other = copy.deepcopy(model)
            for _, ln in layer_norms(other):
                ln.eps = eps
            diffs[f"logits_diff_if_all_eps_{eps:g}"] = (other(pv).logits - ref).abs().max().item()

    model.save_pretrained(out_dir, safe_serialization=True)
    return CaseResult(model, pv, "hf", ["model.safetensors"], meta={
        "scaled_by_1e-3": small + ["pixel_values"],
        "dwconv_calibration_scale": calibration,
        "layernorm_input_variance": stats,
        "layernorm_eps": {n: m.eps for n, m in layer_norms(model)},
        **diffs,
    })


# ---- 9. timm naming ------------------------------------------------------------------

def timm_to_hf_key(key: str) -> str:
    """Map a timm ConvNeXt(V2) state-dict key to the HF ConvNextV2ForImageClassification key."""
    rules = [
        (r"^stem\.0\.", "convnextv2.embeddings.patch_embeddings."),
        (r"^stem\.1\.", "convnextv2.embeddings.layernorm."),
        (r"^stages\.(\d+)\.downsample\.(\d+)\.", r"convnextv2.encoder.stages.\1.downsampling_layer.\2."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"convnextv2.encoder.stages.\1.layers.\2.dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"convnextv2.encoder.stages.\1.layers.\2.layernorm."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"convnextv2.encoder.stages.\1.layers.\2.pwconv1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.", r"convnextv2.encoder.stages.\1.layers.\2.grn."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"convnextv2.encoder.stages.\1.layers.\2.pwconv2."),
        (r"^head\.norm\.", "convnextv2.layernorm."),
        (r"^head\.fc\.", "classifier."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"unmapped timm key {key}")


def timm_to_hf_state_dict(timm_sd: dict, hf_model: nn.Module) -> dict:
    """Rename timm keys to HF keys and reshape where the layouts differ.

    GRN (D,) -> (1, 1, 1, D); 1x1-conv MLP weights (O, I, 1, 1) -> linear (O, I).
    """
    hf_shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    out = {}
    for key, value in timm_sd.items():
        hf_key = timm_to_hf_key(key)
        target = hf_shapes[hf_key]
        if value.shape != target:
            assert value.numel() == int(np.prod(target)), (key, value.shape, target)
            value = value.reshape(target)
        out[hf_key] = value
    assert set(out) == set(hf_shapes), set(out) ^ set(hf_shapes)
    return out


def timm_case(conv_mlp: bool):
    dims, depths, num_classes, batch, height, width = (8, 16, 24, 32), (1, 2, 1, 1), 7, 2, 64, 48

    def build(case, rng, out_dir):
        # Same arguments as timm's convnextv2_* definitions (use_grn=True,
        # ls_init_value=None; conv_mlp=True for atto..nano, False from tiny up).
        tmodel = ConvNeXt(in_chans=3, num_classes=num_classes, depths=depths, dims=dims,
                          use_grn=True, ls_init_value=None, conv_mlp=conv_mlp).eval()
        randomize_parameters(tmodel, rng)
        pv = pixels(rng, batch, 3, height, width)

        timm_sd = {k: v.detach().contiguous() for k, v in tmodel.state_dict().items()}
        safetensors.torch.save_file(timm_sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

        # timm's LayerNorms, including the head norm, all use eps 1e-6.
        config = hf_config(dims, depths, num_classes, layer_norm_eps=1e-6)
        model = ConvNextV2ForImageClassification(config).eval()
        model.load_state_dict(timm_to_hf_state_dict(timm_sd, model), strict=True)
        model.config.save_pretrained(out_dir)

        with torch.no_grad():
            hf32 = model(pv).logits
            t32 = tmodel(pv)
            hf64 = f64_twin(model)(pv.double()).logits
            t64 = copy.deepcopy(tmodel).double()(pv.double())
        mapping = {k: {"hf": timm_to_hf_key(k), "timm_shape": list(v.shape),
                       "hf_shape": list(model.state_dict()[timm_to_hf_key(k)].shape)}
                   for k, v in timm_sd.items()}
        return CaseResult(model, pv, "timm", ["model.safetensors"], uses_timm=True, meta={
            "timm_args": {"in_chans": 3, "num_classes": num_classes, "depths": list(depths), "dims": list(dims),
                          "use_grn": True, "ls_init_value": None, "conv_mlp": conv_mlp},
            "timm_vs_hf_logits_max_abs": (t32 - hf32).abs().max().item(),
            "timm_vs_hf_logits_f64_max_abs": (t64 - hf64).abs().max().item(),
            "timm_to_hf": mapping,
        })
    return build


# ---- 11. bare ConvNextV2Model -------------------------------------------------------------

def build_bare(case, rng, out_dir):
    # A plain ConvNextV2Config: transformers keeps its default 2 labels in memory
    # and so writes no id2label/label2id at all.  The model has no classifier
    # whatever the label count says.
    config = ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], image_size=48)
    model = ConvNextV2Model(config).eval()
    randomize_parameters(model, rng)
    pv = pixels(rng, 2, 3, 48, 48)
    model.save_pretrained(out_dir, safe_serialization=True)
    return CaseResult(model, pv, "hf-bare", ["model.safetensors"])


# ---- 12. weight dtypes ---------------------------------------------------------------------

def weights_dtype_case(dtype: torch.dtype):
    dtype_name = str(dtype).replace("torch.", "")

    def build(case, rng, out_dir):
        config = hf_config([8, 16, 24, 32], [1, 2, 1, 1], 4, image_size=32)
        model = ConvNextV2ForImageClassification(config).eval()
        if dtype == torch.float64:
            # Draw in float64 and keep full float64 precision in the file; the
            # float32 expectations use the weights rounded to float32.
            model64 = ConvNextV2ForImageClassification(config).double().eval()
            randomize_parameters(model64, rng)
            model.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
            stored = model64.state_dict()
            f64_model = model64
        else:
            randomize_parameters(model, rng)
            # Round every parameter to the storage dtype; run on the rounded values.
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(dtype).float())
            stored = {k: v.to(dtype) for k, v in model.state_dict().items()}
            f64_model = None
        pv = pixels(rng, 2, 3, 32, 32)

        stored = {k: v.detach().contiguous() for k, v in stored.items()}
        safetensors.torch.save_file(stored, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        model.config.dtype = dtype_name  # what save_pretrained writes for a model in that dtype
        model.config.save_pretrained(out_dir)
        return CaseResult(model, pv, "hf", ["model.safetensors"], weights_dtype=dtype_name, f64_model=f64_model)
    return build


# ---- 13. sharded checkpoint ------------------------------------------------------------------

def build_sharded(case, rng, out_dir):
    config = hf_config([8, 16, 24, 32], [1, 2, 1, 1], 5, image_size=32)
    model = new_classifier(config, rng)
    pv = pixels(rng, 2, 3, 32, 32)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="40KB")
    with open(os.path.join(out_dir, "model.safetensors.index.json"), encoding="utf-8") as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, shards
    return CaseResult(model, pv, "hf", shards, meta={"weights_index": "model.safetensors.index.json"})


# ---- 14. a transformers 4.x style config.json ------------------------------------------------

def config_4x_json(config: ConvNextV2Config) -> str:
    """config.json as transformers 4.46 writes it for a model loaded from a path.

    Differences from 5.x: "torch_dtype" instead of "dtype", "_name_or_path" is
    written (4.x keeps the path the model was loaded from), and the version
    string.  Checked to be byte-identical to what transformers 4.46.0's own
    ConvNextV2Config.save_pretrained writes for the same settings.
    """
    num_stages = len(config.depths)
    d = {
        "_name_or_path": "./convnextv2-custom-square",
        "architectures": ["ConvNextV2ForImageClassification"],
        "depths": list(config.depths),
        "drop_path_rate": 0.0,
        "hidden_act": config.hidden_act,
        "hidden_sizes": list(config.hidden_sizes),
        "id2label": {str(i): label for i, label in config.id2label.items()},
        "image_size": config.image_size,
        "initializer_range": 0.02,
        "label2id": {label: i for i, label in config.id2label.items()},
        "layer_norm_eps": config.layer_norm_eps,
        "model_type": "convnextv2",
        "num_channels": config.num_channels,
        "num_stages": num_stages,
        "out_features": [f"stage{num_stages}"],
        "out_indices": [num_stages],
        "patch_size": config.patch_size,
        "stage_names": ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)],
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
    }
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def build_config_4x(case, rng, out_dir):
    config = hf_config([8, 16, 24, 32], [1, 2, 1, 1], 7, image_size=64)
    model = new_classifier(config, rng)
    pv = pixels(rng, 3, 3, 64, 64)
    model.save_pretrained(out_dir, safe_serialization=True)
    text = config_4x_json(config)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(text)
    # The hand-written file must load back into the same configuration.
    reloaded = ConvNextV2Config.from_pretrained(out_dir)
    for key in ("hidden_sizes", "depths", "num_stages", "hidden_act", "layer_norm_eps", "num_labels", "patch_size"):
        assert getattr(reloaded, key) == getattr(config, key), key
    return CaseResult(model, pv, "hf", ["model.safetensors"], meta={"config_style": "transformers-4.x"})


# --------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------

SQUARE = hf_config([8, 16, 24, 32], [1, 2, 1, 1], 7, image_size=64)
TINY_DIMS, TINY_DEPTHS = [8, 12, 16, 20], [1, 1, 1, 1]

CASES = [
    Case("atto-224-b2", "The atto preset (models/facebook/convnextv2-atto-1k-224), 1000 labels, 224x224, batch 2.",
         1, build_atto),
    Case("custom-square", "hidden_sizes [8,16,24,32], depths [1,2,1,1], 7 labels, gelu, 64x64, batch 3.",
         2, simple_hf_case(SQUARE, 3, 64, 64)),
    Case("custom-nonsquare", "custom-square's config on a 97x75 (HxW) input, batch 2: the patch and "
         "downsampling convs floor (97x75 -> 24x18 -> 12x9 -> 6x4 -> 3x2).",
         3, simple_hf_case(hf_config([8, 16, 24, 32], [1, 2, 1, 1], 7), 2, 97, 75)),
    Case("relu", "hidden_act relu, hidden_sizes [8,16,24,32], depths [1,2,1,1], 5 labels, 48x48, batch 2.",
         4, simple_hf_case(hf_config([8, 16, 24, 32], [1, 2, 1, 1], 5, image_size=48, hidden_act="relu"), 2, 48, 48)),
    Case("gelu-new", "hidden_act gelu_new (tanh approximation), dims [8,12,16,20], depths [1,1,1,1], 3 labels, 32x32.",
         5, simple_hf_case(hf_config(TINY_DIMS, TINY_DEPTHS, 3, image_size=32, hidden_act="gelu_new"), 1, 32, 32)),
    Case("silu", "hidden_act silu, dims [8,12,16,20], depths [1,1,1,1], 3 labels, 32x32, batch 1.",
         6, simple_hf_case(hf_config(TINY_DIMS, TINY_DEPTHS, 3, image_size=32, hidden_act="silu"), 1, 32, 32)),
    Case("quick-gelu", "hidden_act quick_gelu (x*sigmoid(1.702x)), dims [8,12,16,20], depths [1,1,1,1], 3 labels, 32x32.",
         7, simple_hf_case(hf_config(TINY_DIMS, TINY_DEPTHS, 3, image_size=32, hidden_act="quick_gelu"), 1, 32, 32)),
    Case("no-classifier", "num_labels 0: HF's classifier is the identity, logits == pooler_output; no classifier.* "
         "weights; dims [8,16,24,32], depths [1,1,1,1], 40x40, batch 2.",
         8, build_no_classifier),
    Case("layer-norm-eps", "layer_norm_eps 1e-2 (the final, pooled LayerNorm only; the others are fixed at 1e-6 "
         "in HF). The last stage is scaled (downsampling conv, dwconv bias, pwconv2) so that the final LayerNorm's "
         "input variance is about 1e-2; dims [8,16,24,32], depths [1,1,2,1], 6 labels, 32x32, batch 2.",
         9, build_layer_norm_eps),
    Case("small-activations", "Pixels, every LayerNorm weight/bias except the final one, every conv/linear bias "
         "except the classifier's and every GRN bias scaled by 1e-3, so every LayerNorm's input variance is about "
         "its eps 1e-6 (final layer_norm_eps 1e-6); dims [8,16,24,32], depths [1,2,1,1], 5 labels, 32x32, batch 2.",
         10, build_small_activations),
    Case("timm-conv-mlp", "timm naming: timm ConvNeXt(depths=(1,2,1,1), dims=(8,16,24,32), num_classes=7, "
         "use_grn=True, ls_init_value=None, conv_mlp=True) state dict (1x1-conv MLP weights (O,I,1,1), GRN (D,)); "
         "expected from the converted HF model; 64x48, batch 2.",
         11, timm_case(conv_mlp=True)),
    Case("timm-linear-mlp", "timm naming as timm-conv-mlp but conv_mlp=False (linear MLP weights (O,I)); "
         "64x48, batch 2.",
         12, timm_case(conv_mlp=False)),
    Case("mono-patch2-3stages", "num_channels 1, patch_size 2, num_stages 3, hidden_sizes [8,16,24], depths [1,1,2], "
         "4 labels, 30x34, batch 2.",
         13, simple_hf_case(hf_config([8, 16, 24], [1, 1, 2], 4, num_channels=1, patch_size=2), 2, 30, 34)),
    Case("bare-model", "A ConvNextV2Model (no classifier, keys without the convnextv2. prefix); logits == "
         "pooler_output; dims [8,16,24,32], depths [1,2,1,1], 48x48, batch 2.",
         14, build_bare),
    Case("weights-f16", "Parameters rounded to float16 and stored as float16; expected from the float32 model on "
         "the rounded values; dims [8,16,24,32], depths [1,2,1,1], 4 labels, 32x32, batch 2.",
         15, weights_dtype_case(torch.float16)),
    Case("weights-bf16", "Parameters rounded to bfloat16 and stored as bfloat16; expected from the float32 model "
         "on the rounded values; dims [8,16,24,32], depths [1,2,1,1], 4 labels, 32x32, batch 2.",
         16, weights_dtype_case(torch.bfloat16)),
    Case("weights-f64", "Parameters stored as float64 at full float64 precision; float32 outputs from the weights "
         "rounded to float32, *_f64 outputs from the float64 weights themselves; dims [8,16,24,32], "
         "depths [1,2,1,1], 4 labels, 32x32, batch 2.",
         17, weights_dtype_case(torch.float64)),
    Case("sharded", "save_pretrained(max_shard_size='40KB'): several model-0000N-of-0000M.safetensors shards and "
         "model.safetensors.index.json; dims [8,16,24,32], depths [1,2,1,1], 5 labels, 32x32, batch 2.",
         18, build_sharded),
    Case("config-4x", "custom-square's config with config.json written in the transformers 4.x style "
         "(torch_dtype, _name_or_path, transformers_version 4.46.0); weights from save_pretrained; 64x64, batch 3.",
         19, build_config_4x),
]


def main():
    parser = argparse.ArgumentParser(description="Generate tests/fixtures from the real PyTorch models.")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--out", default=FIXTURES, help="fixtures directory")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)  # nothing should depend on it: every value comes from numpy
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases if n not in by_name]
    if unknown:
        sys.exit(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(by_name)}")
    selected = [by_name[n] for n in args.cases] if args.cases else CASES

    rows = []
    for case in selected:
        out_dir = os.path.join(args.out, case.name)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        rng = np.random.default_rng(case.seed)
        result = case.build(case, rng, out_dir)
        row = write_case(case, out_dir, result)
        with open(os.path.join(out_dir, "meta.json"), encoding="utf-8") as f:
            row["reload"] = verify_reload(out_dir, json.load(f))
        if row["reload"] > 1e-5:
            raise RuntimeError(f"{case.name}: reloading from disk changes the logits by {row['reload']:.3g}")
        rows.append(row)

    header = f"{'case':<22} {'naming':<8} {'weights':<9} {'input BxCxHxW':<15} {'logits':>6} {'params':>9} " \
             f"{'bytes':>10} {'f32/f64 rel':>11} {'reload':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        flag = "  WARN" if r["max_rel"] > REL_WARN else ""
        print(f"{r['case']:<22} {r['naming']:<8} {r['dtype']:<9} {r['input']:<15} {r['labels']:>6} "
              f"{r['params']:>9} {r['bytes']:>10} {r['max_rel']:>11.2e} {r['reload']:>8.1e}{flag}")
    print(f"total {sum(r['bytes'] for r in rows)} bytes in {len(rows)} case(s)")


if __name__ == "__main__":
    main()
