"""Export a family module to ONNX, OpenVINO IR or TorchScript, with a parity check that cannot be skipped.

The exported graph is the family's export contract (:mod:`detector.models.registry`): uint8 RGB
``[B,3,S,S]`` with a dynamic batch in, (scores float32 ``[B]``, maps float32 ``[B,1,S,S]``) out,
normalisation and post-processing inside.  An export folder holds::

    model.onnx | model.xml + model.bin | model.torchscript   the fp32 model
    model.int8.onnx | model.int8.xml + .bin                  optional, statically quantised (ONNX / OpenVINO)
    linewatch-export.json                                    manifest (see detector.runtimes.ExportInfo)
    parity.json                                              the parity report

The checkpoint's metadata (family, product, threshold, version, input size, ...) is also stored in
each model file: ONNX ``metadata_props``, OpenVINO ``rt_info`` under ``linewatch``, TorchScript
extra file ``linewatch.json``.

**Parity** is measured on the category's own test images (or generated images when none are given)
with every installed backend that can run the format, against PyTorch on the same uint8 batches, at
batch 1 and at larger batches.  The export fails (:class:`ExportError`, no manifest written) when a
score differs by more than 1e-4 relative, any verdict at the threshold changes, or a map differs by
more than 1e-3 absolute.

**int8** (optional): ONNX Runtime static quantisation (QDQ, per-channel weights) of the convolutions
and matrix products only, calibrated on normal training images; the map and score arithmetic stays
in float32.  It is kept only when the image AUROC on the test set drops by at most 0.002 against
PyTorch fp32; the figures go in the parity report either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .cli import Command
from .errors import UserError
from .runtimes import (EXPORT_VERSION, FORMAT_BACKENDS, FORMATS, MANIFEST, ExportInfo, Runtime, TorchRuntime,
                       available_backends, export_tool_versions, open_export_runtime)

log = logging.getLogger(__name__)

SCORE_RTOL = 1e-4
MAP_ATOL = 1e-3
INT8_MAX_AUROC_LOSS = 0.002
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.torchscript"}
INT8_FILES = {"onnx": "model.int8.onnx", "openvino": "model.int8.xml"}
METADATA_KEYS = ("family", "variant", "product", "threshold", "version", "image_size")


class ExportError(Exception):
    """An export that must not be used (parity failed, exporter failed); one line."""


@dataclass
class ParityImages:
    """uint8 ``[N,3,S,S]`` images the parity is measured on, and where they came from."""

    images: np.ndarray
    source: str
    labels: np.ndarray | None = None  # 0 normal / 1 defective (test sets), for the int8 AUROC


# ------------------------------------------------------------------------------------ images
def generated_images(size: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth random textures, half with a painted defect: image-like inputs when no test set is given."""
    import cv2

    from .synthetic import paint_defect

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        low = rng.integers(0, 256, (max(2, size // 16), max(2, size // 16), 3)).astype(np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        if i % 2:
            img, _ = paint_defect(img, rng)
        out.append(img)
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def category_images(data: str | Path, size: int, split: str = "test", limit: int | None = None) -> ParityImages:
    """A category's test images (with labels) or normal training images, resized to ``size``."""
    from .data import DatasetError, MVTecFolder, load_images

    ds = MVTecFolder.open(data, need_test=split == "test")
    samples = ds.test if split == "test" else ds.train
    if limit and len(samples) > limit:
        # spread over the sorted list, so every defect type is represented
        samples = [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit)]
    loaded = load_images(samples, size)
    if len(loaded.images) == 0:
        raise DatasetError(f"no readable {split} images in {data}")
    labels = np.array([s.label for s in loaded.samples], dtype=int)
    return ParityImages(loaded.images.transpose(0, 3, 1, 2).copy(), f"{Path(data).name} {split} ({len(labels)} images)",
                        labels)


# ------------------------------------------------------------------------------------ running
def _batches(n: int, batch: int) -> Iterable[slice]:
    """Batch 1 first (the edge of the dynamic axis), then chunks of ``batch``."""
    if n:
        yield slice(0, 1)
    for i in range(1, n, batch):
        yield slice(i, min(n, i + batch))


def run_all(runtime: Runtime, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    for sl in _batches(len(images), batch):
        s, m = runtime(images[sl])
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def compare(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], threshold: float) -> dict[str, Any]:
    """Parity figures of ``got`` against ``ref`` and whether they are within the limits."""
    rs, rm = ref
    gs, gm = got
    if gs.shape != rs.shape or gm.shape != rm.shape:
        return {"passed": False, "error": f"output shapes {gs.shape}/{gm.shape}, expected {rs.shape}/{rm.shape}"}
    rel = np.abs(gs.astype(np.float64) - rs) / np.maximum(np.abs(rs.astype(np.float64)), 1e-12)
    flips = int(np.sum((gs > threshold) != (rs > threshold)))
    map_err = float(np.max(np.abs(gm - rm))) if gm.size else 0.0
    finite = bool(np.isfinite(gs).all() and np.isfinite(gm).all())
    res = {"score_max_rel_diff": float(rel.max()) if rel.size else 0.0,
           "score_max_abs_diff": float(np.max(np.abs(gs - rs))) if gs.size else 0.0,
           "map_max_abs_diff": map_err, "verdict_changes": flips, "finite": finite}
    res["passed"] = bool(finite and res["score_max_rel_diff"] <= SCORE_RTOL and flips == 0 and map_err <= MAP_ATOL)
    return res


# ------------------------------------------------------------------------------------ writing
def _onnx_export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """torch.onnx with a dynamic batch; the torch.export-based exporter, else the TorchScript-based one."""
    kw = dict(input_names=["images"], output_names=["scores", "maps"])
    errors = []
    chatter = io.StringIO()  # the exporter prints its progress; keep it for debug logging only
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), _quiet("onnx_ir", "onnxscript"):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=True, verbose=False,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}}, **kw)
            log.debug("%s", chatter.getvalue())
            return "torch.onnx (dynamo)"
        except Exception as e:  # noqa: BLE001 - try the older exporter before giving up
            errors.append(f"dynamo: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
            log.info("dynamo ONNX export failed (%s); trying the TorchScript-based exporter", errors[-1])
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=17,
                              dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}},
                              **kw)
            return "torch.onnx (torchscript)"
        except Exception as e:  # noqa: BLE001
            errors.append(f"torchscript: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
    raise ExportError("ONNX export failed: " + "; ".join(errors))


@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.WARNING):
    """Raise the named loggers to ``level`` for the duration (exporter and quantiser chatter)."""
    saved = {n: logging.getLogger(n).level for n in loggers}
    for n in loggers:
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def set_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {f"linewatch.{k}": json.dumps(v) for k, v in metadata.items()})
    # one self-contained file: the exporter may have put the weights in a "<name>.data" sidecar
    onnx.save(model, str(path), save_as_external_data=False)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The linewatch metadata stored inside an exported model file (.onnx, .xml, .torchscript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
        return {p.key[len("linewatch."):]: json.loads(p.value) for p in props if p.key.startswith("linewatch.")}
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        info = model.get_rt_info()["linewatch"]
        return {k: json.loads(info[k].astype(str)) for k in info}
    extra = {"linewatch.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["linewatch.json"])


def _save_openvino(onnx_path: Path, xml_path: Path, metadata: dict[str, Any]) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    for k, v in metadata.items():
        model.set_rt_info(json.dumps(v), ["linewatch", k])
    # fp16 weight compression is OpenVINO's default; keep float32 weights so the numbers match PyTorch
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def _save_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> str:
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; it still serves older deployments
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"linewatch.json": json.dumps(metadata)})
    return "torch.jit.trace"


def _write_model(module: torch.nn.Module, fmt: str, out: Path, work: Path, example: torch.Tensor,
                 metadata: dict[str, Any]) -> str:
    """Write the fp32 model of ``fmt`` into ``out`` -> the exporter used.  ``work``: scratch folder."""
    if fmt == "torchscript":
        return _save_torchscript(module, example, out / MODEL_FILES[fmt], metadata)
    onnx_path = (out if fmt == "onnx" else work) / "model.onnx"
    exporter = _onnx_export(module, example, onnx_path)
    set_onnx_metadata(onnx_path, metadata)
    if fmt == "openvino":
        _save_openvino(onnx_path, out / MODEL_FILES[fmt], metadata)
        exporter += " + openvino.convert_model"
    return exporter


# ---------------------------------------------------------------------------------------- int8
def quantize_int8(fp32_onnx: Path, int8_onnx: Path, calibration: np.ndarray, batch: int = 8) -> None:
    """ONNX Runtime static quantisation of Conv/MatMul/Gemm (QDQ, per-channel, MinMax calibration)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"images": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self._it, None)

    with warnings.catch_warnings(), _quiet("root", level=logging.ERROR), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        source = Path(tmp) / "pre.onnx"
        try:  # shape inference + graph clean-up, as ONNX Runtime recommends before quantising
            quant_pre_process(str(fp32_onnx), str(source))
        except Exception as e:  # noqa: BLE001 - the plain model quantises too, only less tidily
            log.info("quantisation pre-processing skipped: %s", str(e).splitlines()[0][:200] if str(e) else e)
            source = fp32_onnx
        quantize_static(str(source), str(int8_onnx), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _int8(fmt: str, out: Path, work: Path, fp32_onnx: Path, metadata: dict[str, Any], calibration: np.ndarray,
          test: ParityImages, ref_scores: np.ndarray, device: str) -> dict[str, Any]:
    """Quantise, measure the AUROC change on the test set; keep the model only within the limit."""
    from .metrics import image_auroc

    q_onnx = (out if fmt == "onnx" else work) / "model.int8.onnx"
    t = time.perf_counter()
    quantize_int8(fp32_onnx, q_onnx, calibration)
    meta8 = {**metadata, "precision": "int8"}
    set_onnx_metadata(q_onnx, meta8)
    if fmt == "openvino":
        _save_openvino(q_onnx, out / INT8_FILES[fmt], meta8)
    backend = "onnxruntime" if fmt == "onnx" else "openvino"
    info = ExportInfo(out, fmt, {"int8": INT8_FILES[fmt]}, metadata)
    scores, _ = run_all(open_export_runtime(info, backend, "int8", device), test.images)
    ref_auc = image_auroc(test.labels, ref_scores)
    auc = image_auroc(test.labels, scores)
    loss = ref_auc - auc
    res = {"method": "onnxruntime static quantisation (QDQ; Conv/MatMul/Gemm int8, per-channel weights; "
                     "maps and scores float32)",
           "calibration_images": int(len(calibration)), "test_images": test.source, "backend": backend,
           "image_auroc_fp32_torch": ref_auc, "image_auroc_int8": auc, "image_auroc_loss": loss,
           "max_auroc_loss": INT8_MAX_AUROC_LOSS, "seconds": round(time.perf_counter() - t, 1),
           "verdict_changes": int(np.sum((scores > metadata["threshold"]) != (ref_scores > metadata["threshold"]))),
           "score_max_rel_diff": float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))}
    res["accepted"] = bool(np.isfinite(loss) and loss <= INT8_MAX_AUROC_LOSS)
    if not res["accepted"]:
        for name in (INT8_FILES[fmt], Path(INT8_FILES[fmt]).with_suffix(".bin").name):
            (out / name).unlink(missing_ok=True)
    return res


# ------------------------------------------------------------------------------------- export
def export_module(module: torch.nn.Module, metadata: dict[str, Any], fmt: str, out: str | Path,
                  parity: ParityImages | None = None, *, checkpoint_meta: dict[str, Any] | None = None,
                  int8_calibration: np.ndarray | None = None, device: str = "cpu", batch: int = 8) -> ExportInfo:
    """Export ``module`` (the export contract) as ``fmt`` into the folder ``out`` and check parity.

    ``metadata`` must name at least ``threshold`` and ``image_size``.  ``parity``: images to
    compare on (default: generated).  ``int8_calibration``: normal uint8 images -> also try an
    int8 model (needs ``parity`` with labels of both kinds).  Raises :class:`ExportError` when
    parity fails; ``parity.json`` is written in every case, the manifest only on success.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt in ("onnx", "openvino"):
        _require_exporter(fmt)
    backends = [b for b in FORMAT_BACKENDS[fmt] if b in available_backends()]
    if not backends:
        raise ExportError(f"no installed backend can run a {fmt} export to check its parity "
                          f"(pip install 'linewatch[{'onnx' if fmt == 'onnx' else fmt}]')")
    size = int(module.image_size)
    metadata = {**metadata, "format": fmt, "precision": "fp32", "export_version": EXPORT_VERSION}
    threshold = float(metadata["threshold"])
    parity = parity or ParityImages(generated_images(size), "generated (16 images)")
    if parity.images.shape[1:] != (3, size, size) or parity.images.dtype != np.uint8:
        raise ExportError(f"parity images must be uint8 [N,3,{size},{size}], got {parity.images.dtype} "
                          f"{list(parity.images.shape)}")
    if int8_calibration is not None:
        if fmt == "torchscript":
            raise ExportError("int8 is available for onnx and openvino exports")
        if parity.labels is None or len(set(parity.labels.tolist())) < 2:
            raise ExportError("int8 needs a labelled test set with normal and defective images (--data)")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for the new files
    module = module.cpu().eval()
    reference = run_all(TorchRuntime(module, "cpu"), parity.images, batch)
    example = torch.from_numpy(parity.images[:2])
    report: dict[str, Any] = {"format": fmt, "images": parity.source, "n_images": int(len(parity.images)),
                              "batches": sorted({sl.stop - sl.start for sl in _batches(len(parity.images), batch)}),
                              "threshold": threshold,
                              "limits": {"score_rel": SCORE_RTOL, "map_abs": MAP_ATOL, "verdict_changes": 0},
                              "reference": "torch float32 on CPU", "tool_versions": export_tool_versions(),
                              "backends": {}}
    with tempfile.TemporaryDirectory(prefix="linewatch-export-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        try:
            report["exporter"] = _write_model(module, fmt, out, work, example, metadata)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - exporter internals: one line for the user
            raise ExportError(f"{fmt} export failed: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from e
        report["export_seconds"] = round(time.perf_counter() - t, 1)
        info = ExportInfo(out, fmt, {"fp32": MODEL_FILES[fmt]}, metadata, checkpoint_meta or {})
        for b in backends:
            try:
                got = run_all(open_export_runtime(info, b, "fp32", device), parity.images, batch)
                report["backends"][b] = compare(reference, got, threshold)
            except Exception as e:  # noqa: BLE001 - a backend that cannot run it fails the parity
                report["backends"][b] = {"passed": False, "error": str(e).splitlines()[0][:300] if str(e) else type(e).__name__}
        report["passed"] = all(r["passed"] for r in report["backends"].values())
        if report["passed"] and int8_calibration is not None:
            fp32_onnx = (out if fmt == "onnx" else work) / "model.onnx"
            report["int8"] = _int8(fmt, out, work, fp32_onnx, metadata, int8_calibration, parity, reference[0], device)
            if report["int8"]["accepted"]:
                info.models["int8"] = INT8_FILES[fmt]
    info.parity = report
    (out / "parity.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if not report["passed"]:
        bad = {b: r for b, r in report["backends"].items() if not r["passed"]}
        raise ExportError(f"parity failed ({_why(bad)}); see {out / 'parity.json'} -- this export must not be used")
    tmp_manifest = out / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(info.to_json(), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp_manifest, out / MANIFEST)
    return info


def _why(bad: dict[str, dict[str, Any]]) -> str:
    parts = []
    for b, r in bad.items():
        if "error" in r:
            parts.append(f"{b}: {r['error']}")
            continue
        parts.append(f"{b}: score rel diff {r['score_max_rel_diff']:.2e} (limit {SCORE_RTOL:.0e}), "
                     f"{r['verdict_changes']} verdict changes, map abs diff {r['map_max_abs_diff']:.2e} "
                     f"(limit {MAP_ATOL:.0e}){'' if r['finite'] else ', non-finite outputs'}")
    return "; ".join(parts)


def _require_exporter(fmt: str) -> None:
    import importlib.util

    missing = [p for p in ("onnx", "onnxscript", *(("openvino",) if fmt == "openvino" else ()))
               if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"{fmt} export needs {', '.join(missing)} (pip install 'linewatch[{'onnx' if fmt == 'onnx' else fmt}]')")


# --------------------------------------------------------------------------------- checkpoints
def checkpoint_metadata(module: torch.nn.Module, meta: dict[str, Any], sha: str) -> dict[str, Any]:
    """What an export carries inside its model file(s), from a checkpoint's meta and file hash."""
    md = {"family": meta.get("family", ""), "variant": meta.get("variant", ""), "product": meta.get("product"),
          "threshold": float(meta.get("threshold", float("inf"))), "version": sha[:12], "checkpoint_sha256": sha,
          "image_size": int(module.image_size)}
    if meta.get("thresholds"):  # a unified model: one threshold per product
        md["thresholds"] = {str(k): float(v) for k, v in meta["thresholds"].items()}
    return md


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, data: str | Path | None = None, *,
                      int8: bool = False, max_images: int | None = 200, calibration_images: int = 64) -> ExportInfo:
    """Export a checkpoint; parity on ``data``'s test images (generated ones without ``data``)."""
    from .checkpoint import load_model

    module, meta, sha = load_model(checkpoint, "cpu")
    size = int(module.image_size)
    if int8 and data is None:
        raise ExportError("--int8 needs --data: it is calibrated on the category's normal training images and "
                          "accepted only on its test set's AUROC")
    parity = category_images(data, size, "test", max_images) if data else None
    calib = category_images(data, size, "train", calibration_images).images if int8 else None
    return export_module(module, checkpoint_metadata(module, meta, sha), fmt, out, parity, checkpoint_meta=meta,
                         int8_calibration=calib)


# -------------------------------------------------------------------------------------- command
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'train' (any model family)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (runs on onnxruntime and openvino), openvino (IR .xml/.bin) or torchscript")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder to write (created; its old export "
                                                              "files are replaced)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="the category's folder (MVTec layout): parity on its test images, int8 calibration on its "
                        "train/good images (default: parity on 16 generated images)")
    p.add_argument("--max-images", type=int, default=200, metavar="N",
                   help="at most N test images for the parity check, spread over the defect types (default 200)")
    p.add_argument("--int8", action="store_true",
                   help=f"also write a statically quantised int8 model (onnx/openvino), kept only when the image "
                        f"AUROC on the test set drops by at most {INT8_MAX_AUROC_LOSS} (needs --data)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N",
                   help="normal training images to calibrate int8 on (default 64)")


def _run(args: argparse.Namespace) -> int:
    import sys

    try:
        info = export_checkpoint(args.checkpoint, args.format, args.out, args.data, int8=args.int8,
                                 max_images=args.max_images, calibration_images=args.calibration_images)
    except ExportError as e:
        raise UserError(str(e)) from None
    rep = info.parity
    md = info.metadata
    print(f"wrote {args.format} export of {md['family'] or 'model'} {md['version']} ({md['image_size']} px, "
          f"threshold {md['threshold']:.5f}) to {args.out} [{rep['exporter']}, {rep['export_seconds']} s]")
    for b, r in rep["backends"].items():
        print(f"parity {b}: score rel diff {r['score_max_rel_diff']:.1e}, map abs diff {r['map_max_abs_diff']:.1e}, "
              f"{r['verdict_changes']} verdict changes on {rep['images']} at batches {rep['batches']}: ok")
    q = rep.get("int8")
    if q:
        print(f"int8: image AUROC {q['image_auroc_int8']:.4f} vs {q['image_auroc_fp32_torch']:.4f} fp32 "
              f"(loss {q['image_auroc_loss']:+.4f}, limit {INT8_MAX_AUROC_LOSS}): "
              f"{'kept' if q['accepted'] else 'REJECTED, not written'}")
        if not q["accepted"]:
            print("linewatch-detector: the fp32 export is usable; the int8 model lost too much accuracy",
                  file=sys.stderr)
            return 3
    return 0


COMMANDS = [
    Command(
        "export", "export a checkpoint to ONNX / OpenVINO / TorchScript, parity checked",
        "Write the checkpoint's model as an ONNX, OpenVINO IR or TorchScript file into --out, with a dynamic\n"
        "batch, uint8 frames in and (scores, maps) out, and the checkpoint's family, product, threshold,\n"
        "version and input size in the model's metadata.  Parity with PyTorch is always checked, with every\n"
        "installed backend that runs the format: the export fails (exit 2, no manifest written) when a score\n"
        "differs by more than 1e-4 relative, a verdict at the threshold changes, or a map differs by more than\n"
        "1e-3.  The figures are in <out>/parity.json.  Run an export with\n"
        "  linewatch-detector serve --model <out> --backend auto|onnxruntime|openvino|torchscript\n"
        "or Detector.load('<out>', backend=...).  Needs the extras: pip install 'linewatch[onnx]' / '[openvino]'.",
        _add_arguments, _run),
]
