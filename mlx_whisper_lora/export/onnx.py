"""Write a transformers Whisper folder as ONNX in the layout transformers.js (and optimum's
ORTModelForSpeechSeq2Seq) load: `onnx/encoder_model.onnx` and `onnx/decoder_model_merged.onnx` (first step and
cached steps in one graph, chosen by its `use_cache_branch` input), with config.json, generation_config.json,
preprocessor_config.json and the tokenizer files at the top; `quantize="int8"` adds onnxruntime's dynamic int8
quantization of both as `onnx/*_quantized.onnx` (transformers.js's suffix for its default `q8` dtype on wasm).

optimum-onnx (the maintained exporter) pins transformers < 4.58, so it cannot install beside transformers 5;
the graphs are traced here with torch.onnx over the transformers model's own modules (weights and layer norms
are transformers'; only the attention with a key/value cache is written out, in the few lines below, so the
trace has no Cache objects in it). The merged decoder is built as optimum builds its own: an ONNX `If` on
`use_cache_branch`; its branches hold only the cross-attention keys/values (projected from the encoder output
on the first step, passed through from the cache after), so the decoder's weights are stored once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..errors import UserError
from .onnx_runtime import QUANTIZED_SUFFIX

OPSET = 17
TOP_FILES = ("generation_config.json", "preprocessor_config.json", "tokenizer.json",
             "tokenizer_config.json", "README.md")


def require_onnx_packages() -> None:
    import importlib.util

    missing = [name for name in ("torch", "transformers", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"the ONNX export needs {', '.join(missing)}: pip install 'mlx-whisper-lora[onnx]'")


def _modules(hf_folder: Path):
    """The torch modules traced: encoder, cross-attention key/value projections, decoder with a cache."""
    import torch
    import transformers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(hf_folder), dtype=torch.float32).eval()
    decoder = model.model.decoder
    heads = model.config.decoder_attention_heads

    def split(x):  # (batch, time, state) -> (batch, heads, time, head_dim)
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def attend(q, k, v, mask=None):
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model.model.encoder

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state

    class CrossKeysValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = decoder.layers

        def forward(self, encoder_hidden_states):
            out = []
            for layer in self.layers:
                out += [split(layer.encoder_attn.k_proj(encoder_hidden_states)),
                        split(layer.encoder_attn.v_proj(encoder_hidden_states))]
            return tuple(out)

    class Decoder(torch.nn.Module):
        """One decoder call: new tokens, the self-attention cache (may be 0 long) and the cross keys/values."""

        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, input_ids, *caches):
            n = len(self.decoder.layers)
            past, cross = caches[:2 * n], caches[2 * n:]
            offset = past[0].shape[2]
            steps = input_ids.shape[1]
            positions = torch.arange(steps, device=input_ids.device) + offset
            x = self.decoder.embed_tokens(input_ids) + self.decoder.embed_positions.weight[positions]
            keys_at = torch.arange(steps + offset, device=input_ids.device)
            mask = keys_at[None, :] > positions[:, None]
            present = []
            for i, layer in enumerate(self.decoder.layers):
                a = layer.self_attn
                h = layer.self_attn_layer_norm(x)
                k = torch.cat([past[2 * i], split(a.k_proj(h))], dim=2)
                v = torch.cat([past[2 * i + 1], split(a.v_proj(h))], dim=2)
                present += [k, v]
                x = x + a.out_proj(attend(split(a.q_proj(h) * a.scaling), k, v, mask))
                c = layer.encoder_attn
                h = layer.encoder_attn_layer_norm(x)
                x = x + c.out_proj(attend(split(c.q_proj(h) * c.scaling), cross[2 * i], cross[2 * i + 1]))
                h = layer.final_layer_norm(x)
                x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            logits = self.decoder.layer_norm(x) @ self.decoder.embed_tokens.weight.T
            return (logits, *present)

    return model.config, Encoder().eval(), CrossKeysValues().eval(), Decoder().eval()


def _cache_names(layers: int, kind: str, prefix: str) -> List[str]:
    return [f"{prefix}.{i}.{kind}.{kv}" for i in range(layers) for kv in ("key", "value")]


def _export(module, args, path: Path, inputs, outputs, axes) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _merge(cross_path: Path, decoder_path: Path, layers: int, out: Path) -> None:
    """decoder_model_merged: If(use_cache_branch) gives the cross keys/values (the cache's on later steps, the
    projection of encoder_hidden_states on the first), which are also the present.*.encoder.* outputs."""
    import onnx
    from onnx import TensorProto, helper

    cross, dec = onnx.load(str(cross_path)), onnx.load(str(decoder_path))
    enc_past = _cache_names(layers, "encoder", "past_key_values")
    enc_present = _cache_names(layers, "encoder", "present")
    # the projection graph becomes the else branch: its inner names prefixed, its input read from the outer graph
    g = cross.graph
    outer = {"encoder_hidden_states"}
    rename = {}
    for node in g.node:
        for name in list(node.input) + list(node.output):
            if name and name not in outer:
                rename.setdefault(name, "cross/" + name)
    for init in g.initializer:
        rename.setdefault(init.name, "cross/" + init.name)
    for node in g.node:
        node.name = "cross/" + node.name
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for init in g.initializer:
        init.name = rename[init.name]
    else_outputs = [onnx.ValueInfoProto() for _ in g.output]
    for vi, o in zip(else_outputs, g.output):
        vi.CopyFrom(o)
        vi.name = rename.get(o.name, o.name)
    else_branch = helper.make_graph(list(g.node), "first_step", [], else_outputs, initializer=list(g.initializer))
    then_branch = helper.make_graph(
        [helper.make_node("Identity", [p], [f"cached/{p}"]) for p in enc_past], "with_past", [],
        [helper.make_tensor_value_info(f"cached/{p}", TensorProto.FLOAT, None) for p in enc_past])
    branch = helper.make_node("If", ["use_cache_branch"], enc_present, name="use_cache_branch_if",
                              then_branch=then_branch, else_branch=else_branch)
    graph = dec.graph
    graph.node.insert(0, branch)
    # the decoder's cross-attention inputs (traced as cross.*) are the If's outputs
    cross_inputs = {f"cross.{i}.{kv}": f"present.{i}.encoder.{kv}" for i in range(layers) for kv in ("key", "value")}
    for node in graph.node:
        node.input[:] = [cross_inputs.get(n, n) for n in node.input]
    kept = [i for i in graph.input if i.name not in cross_inputs]
    cross_dims = cross.graph.output[0].type.tensor_type.shape.dim  # (batch, heads, time, head_dim)
    past_shape = ["batch_size", cross_dims[1].dim_value, "encoder_sequence_length_out", cross_dims[3].dim_value]
    new_inputs = kept[:1] + [cross.graph.input[0]]  # encoder_hidden_states (batch_size, encoder_sequence_length, d)
    new_inputs += kept[1:] + [helper.make_tensor_value_info(p, TensorProto.FLOAT, past_shape) for p in enc_past]
    new_inputs += [helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])]
    del graph.input[:]
    graph.input.extend(new_inputs)
    graph.output.extend([helper.make_tensor_value_info(p, TensorProto.FLOAT, past_shape) for p in enc_present])
    merged = helper.make_model(graph, opset_imports=dec.opset_import, producer_name="mlx_whisper_lora")
    merged.ir_version = dec.ir_version
    onnx.checker.check_model(merged)
    onnx.save(merged, str(out))


def _store_transposes_once(path: Path) -> None:
    """A large matrix stored beside its own transpose is stored once: the trace's constant folding writes the
    output projection's matrix (the token embedding transposed: 80 MB in float32 for the 51,864-token vocabulary)
    as a second initializer. The copy becomes a Transpose node of the other, which onnxruntime (and
    onnxruntime-web) fold when the session loads. Run on the float file after quantizing: the int8 quantizer makes
    only initializers int8 (and makes the two differently: uint8 for the lookup, int8 for the MatMul)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    large = [i for i in graph.initializer if len(i.dims) == 2 and i.dims[0] * i.dims[1] >= 1 << 20]
    removed = set()
    for init in large:
        for other in large:
            if (other is not init and other.name not in removed and init.name not in removed
                    and list(other.dims) == list(init.dims)[::-1] and other.data_type == init.data_type
                    and np.array_equal(numpy_helper.to_array(init), numpy_helper.to_array(other).T)):
                removed.add(init.name)
                graph.node.insert(0, helper.make_node("Transpose", [other.name], [init.name], perm=[1, 0],
                                                      name=f"transpose_of_{other.name}"))
                break
    for init in [i for i in graph.initializer if i.name in removed]:
        graph.initializer.remove(init)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_onnx(hf_folder: Path, save_path: Path, quantize: Optional[str] = None, log=print) -> Path:
    """Export the transformers Whisper folder `hf_folder` to `save_path` (see the module docstring for the
    layout); `quantize="int8"` also writes the dynamically quantized int8 variants. Returns `save_path`."""
    if quantize not in (None, "int8"):
        raise UserError(f"ONNX export quantization {quantize!r}: use int8 (or none for float32)")
    require_onnx_packages()
    import torch

    hf_folder, save_path = Path(hf_folder), Path(save_path)
    config, encoder, cross, decoder = _modules(hf_folder)
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    head_dim = config.d_model // heads
    onnx_dir = save_path / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    for stale in onnx_dir.glob(f"*{QUANTIZED_SUFFIX}.onnx"):  # a rewrite without int8 must not keep an older int8
        stale.unlink()
    features = torch.zeros(1, config.num_mel_bins, 2 * config.max_source_positions)
    _export(encoder, (features,), onnx_dir / "encoder_model.onnx", ["input_features"], ["last_hidden_state"],
            {"input_features": {0: "batch_size"}, "last_hidden_state": {0: "batch_size"}})
    dec_past = _cache_names(layers, "decoder", "past_key_values")
    dec_present = _cache_names(layers, "decoder", "present")
    cross_names = [f"cross.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hidden = torch.zeros(1, config.max_source_positions, config.d_model)
        _export(cross, (hidden,), tmp / "cross.onnx", ["encoder_hidden_states"], cross_names,
                {"encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
                 **{n: {0: "batch_size", 2: "encoder_sequence_length_out"} for n in cross_names}})
        ids = torch.zeros(1, 2, dtype=torch.long)
        past = [torch.zeros(1, heads, 3, head_dim)] * (2 * layers)  # traced with a cache; it may be 0 long
        cross_kv = [torch.zeros(1, heads, config.max_source_positions, head_dim)] * (2 * layers)
        _export(decoder, (ids, *past, *cross_kv), tmp / "decoder.onnx", ["input_ids", *dec_past, *cross_names],
                ["logits", *dec_present],
                {"input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
                 "logits": {0: "batch_size", 1: "decoder_sequence_length"},
                 **{n: {0: "batch_size", 2: "past_decoder_sequence_length"} for n in dec_past},
                 **{n: {0: "batch_size", 2: "past_decoder_sequence_length + 1"} for n in dec_present},
                 **{n: {0: "batch_size", 2: "encoder_sequence_length_out"} for n in cross_names}})
        _merge(tmp / "cross.onnx", tmp / "decoder.onnx", layers, onnx_dir / "decoder_model_merged.onnx")
    for name in TOP_FILES:
        if (hf_folder / name).exists() and hf_folder.resolve() != save_path.resolve():
            shutil.copyfile(hf_folder / name, save_path / name)
    # the whole config as transformers holds it, defaults included: transformers.js reads the JSON as it is and
    # needs what transformers only implies (is_encoder_decoder, for one)
    config.to_json_file(str(save_path / "config.json"), use_diff=False)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for stem in ("encoder_model", "decoder_model_merged"):
            target = onnx_dir / f"{stem}{QUANTIZED_SUFFIX}.onnx"
            # weights of MatMul and Gather (projections, embeddings) to int8; activations quantized per call
            quantize_dynamic(onnx_dir / f"{stem}.onnx", target, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gather"])
    _store_transposes_once(onnx_dir / "decoder_model_merged.onnx")
    sizes = {p.name: p.stat().st_size for p in sorted(onnx_dir.glob("*.onnx"))}
    log("ONNX export: " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items()))
    return save_path


def onnx_runner(path: Path, language: Optional[str] = None, quantized: bool = False) -> Callable[[np.ndarray], str]:
    """Transcribe a 16 kHz float32 clip greedily (temperature 0) with onnxruntime reading the export at `path`
    (its float files, or the int8 ones with `quantized`): this package's decoder (suppression, timestamp rules,
    30 s windows) over the two sessions (export/onnx_runtime.py), since optimum's ORTModelForSpeechSeq2Seq
    cannot be installed beside transformers 5. The log-mel is this package's (openai-whisper's): the clip's
    log-mel padded with zeros to 3000 frames; transformers' feature extractor, and transformers.js's, pad the
    audio to 30 s before the log-mel instead, so short clips reach the model with other padding frames."""
    require_onnx_packages()
    from ..inference.transcriber import transcribe
    from .onnx_runtime import OnnxWhisper

    model = OnnxWhisper(Path(path), quantized=quantized)
    return lambda audio: transcribe(np.asarray(audio, dtype=np.float32), model, language=language, temperature=0.0,
                                    verbose=None, progress=False)["text"]
