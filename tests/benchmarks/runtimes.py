"""Runtime benchmark (outside CI): frames/s per family x backend x precision, side by side in one run.

    python -m tests.benchmarks.runtimes --help
    nice -n 10 python -m tests.benchmarks.runtimes --checkpoint ear.pt --checkpoint crad.pt \\
        --data ../shared/data/mvtec_ad/bottle --int8 --out /tmp/rt-bench

For each checkpoint: export it (ONNX, OpenVINO IR, TorchScript; with ``--int8`` also the int8
models, calibrated on the category's normal training images), which checks parity on its test
images; then one fresh process per row (checkpoint x backend x precision) that loads the model with
``detector.runtimes.open_runtime``, scores the whole test set at batch 8 (-> image AUROC) and
times batch 1 and batch 8 on test images for ``--seconds`` each (frames/s = frames / wall time,
after one warm-up call).  Peak RSS is that process's own (VmHWM): model, runtime and buffers.
Every backend gets the same thread count (``--threads``).  Rows run one after another, so compare
only within one run, and say what else was running on the machine.

Backend ``auto`` (what ``serve --backend auto`` does) is measured on the checkpoint twice: with an
empty export cache (its load time includes the one-time ONNX export and parity check) and with the
cache that run left; the rows say which backend it chose and how long loading took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROW_FLAG = "--row"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.runtimes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint (repeat for several families)")
    p.add_argument("--data", required=True, help="category folder (MVTec layout): parity, AUROC, int8 calibration")
    p.add_argument("--out", required=True, help="folder for the exports and results")
    p.add_argument("--int8", action="store_true", help="also export and measure int8 models")
    p.add_argument("--backends", default="torch,torchscript,onnxruntime,openvino",
                   help="comma-separated backends to measure (default all four; add 'auto' for the automatic "
                        "choice on the checkpoint, with an empty and then a filled export cache)")
    p.add_argument("--formats", default="onnx,openvino,torchscript",
                   help="export formats (default all three; OpenVINO also runs the ONNX export, so 'onnx' alone "
                        "measures both ONNX backends)")
    p.add_argument("--reuse", action="store_true", help="keep exports already in --out (their parity file stands)")
    p.add_argument("--seconds", type=float, default=6.0, help="timing per batch size per row (default 6)")
    p.add_argument("--threads", type=int, default=2, help="inference threads for every backend (default 2)")
    p.add_argument("--max-images", type=int, default=200, help="test images for parity and AUROC (default 200)")
    p.add_argument("--json", default=None, help="write all figures as JSON here (default <out>/runtimes.json)")
    return p


# --------------------------------------------------------------------------------- one row
def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, AUROC on the test set, frames/s at batch 1 and 8, peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    from detector.benchmark import peak_rss_mb
    from detector.export import category_images, run_all
    from detector.metrics import image_auroc
    from detector.runtimes import open_runtime

    t = time.perf_counter()
    loaded = open_runtime(spec["path"], spec["backend"], "cpu", 8, spec["precision"], spec["threads"])
    load_s = time.perf_counter() - t
    test = category_images(spec["data"], loaded.image_size, "test", spec["max_images"])
    scores, _ = run_all(loaded.runtime, test.images, 8)
    res: dict[str, Any] = {"image_auroc": image_auroc(test.labels, scores), "load_s": round(load_s, 2),
                           "n_test": int(len(scores)), "runs_on": loaded.runtime.describe(),
                           "auto_ms_per_frame": {t.backend: round(t.ms_per_frame, 2) for t in loaded.timings}}
    for batch in (1, 8):
        images = np.ascontiguousarray(np.resize(test.images, (batch, *test.images.shape[1:])))
        loaded.runtime(images)  # warm-up
        n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < spec["seconds"] or n < 2 * batch:
            loaded.runtime(images)
            n += batch
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        res[f"fps_b{batch}"] = n / wall
        res[f"cpu_ms_per_frame_b{batch}"] = 1000.0 * cpu / n
    res["peak_rss_mib"] = peak_rss_mb()
    return res


def _run_row(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    if "export_cache" in spec:
        env["LINEWATCH_EXPORT_CACHE"] = spec["export_cache"]
    proc = subprocess.run([sys.executable, "-m", "tests.benchmarks.runtimes", ROW_FLAG, json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [ROW_FLAG]:
        print(json.dumps(measure_row(json.loads(argv[1]))))
        return 0
    args = build_parser().parse_args(argv)
    from detector.export import ExportError, export_checkpoint
    from detector.runtimes import FORMAT_BACKENDS, available_backends, is_export, read_export

    out = Path(args.out)
    wanted = [b for b in args.backends.split(",") if b]
    have = available_backends()
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpus": os.cpu_count(), "threads": args.threads, "seconds": args.seconds, "data": args.data,
        "load_before": os.getloadavg(), "checkpoints": {}, "rows": []}
    for ckpt in args.checkpoint:
        name = Path(ckpt).stem
        exports: dict[str, Any] = {}
        family = name
        for fmt in args.formats.split(","):
            if not any(b in wanted and b in have for b in FORMAT_BACKENDS[fmt]):
                continue
            t = time.perf_counter()
            try:
                if args.reuse and is_export(out / name / fmt):
                    info = read_export(out / name / fmt)
                else:
                    info = export_checkpoint(ckpt, fmt, out / name / fmt, args.data,
                                             int8=args.int8 and fmt != "torchscript", max_images=args.max_images)
            except ExportError as e:  # a format this family cannot export: say so, measure the others
                exports[fmt] = {"error": str(e)}
                print(f"{name}: {fmt} export failed: {e}", flush=True)
                continue
            exports[fmt] = {"dir": str(info.dir), "models": info.models, "parity": info.parity,
                            "seconds": round(time.perf_counter() - t, 1)}
            print(f"{name}: exported {fmt} in {exports[fmt]['seconds']} s; parity "
                  + ", ".join(f"{b} score rel {r['score_max_rel_diff']:.1e} map {r['map_max_abs_diff']:.1e}"
                              for b, r in info.parity["backends"].items())
                  + (f"; int8 AUROC loss {info.parity['int8']['image_auroc_loss']:+.4f}" if "int8" in info.parity else ""),
                  flush=True)
            family = info.metadata.get("family") or name
        results["checkpoints"][name] = {"path": ckpt, "family": family, "exports": exports}
        rows = {("torch", "fp32"): ("checkpoint", ckpt)} if "torch" in wanted else {}
        for fmt, exp in exports.items():  # each (backend, precision) once, from the first format that has it
            for backend in FORMAT_BACKENDS[fmt]:
                for prec in exp.get("models", {}):
                    if backend in wanted and backend in have:
                        rows.setdefault((backend, prec), (fmt, exp["dir"]))
        if "auto" in wanted:
            shutil.rmtree(out / name / "auto-cache", ignore_errors=True)
            rows[("auto", "fp32")] = ("checkpoint, empty export cache", ckpt)
            rows[("auto", "fp32", "warm")] = ("checkpoint, export cached", ckpt)
        for (backend, prec, *_), (source, path) in rows.items():
            spec = {"path": str(path), "backend": backend, "precision": prec, "data": args.data,
                    "threads": args.threads, "seconds": args.seconds, "max_images": args.max_images}
            if backend == "auto":
                spec["export_cache"] = str(out / name / "auto-cache")
            res = {"checkpoint": name, "family": family, "backend": backend, "precision": prec, "source": source,
                   **_run_row(spec)}
            results["rows"].append(res)
            print(_line(res), flush=True)
    results["load_after"] = os.getloadavg()
    Path(args.json or out / "runtimes.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    return 0


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['family']:<10} {r['backend']:<12} {r['precision']:<5} ERROR {r['error']}"
    return (f"{r['family']:<10} {_backend(r):<12} {r['precision']:<5} b1 {r['fps_b1']:6.1f} fps  "
            f"b8 {r['fps_b8']:6.1f} fps  RSS {r['peak_rss_mib']:6.0f} MiB  AUROC {r['image_auroc']:.4f}  "
            f"load {r['load_s']:.1f} s")


def _backend(r: dict[str, Any]) -> str:
    return f"auto -> {r['runs_on']}" if r["backend"] == "auto" and "runs_on" in r else r["backend"]


def markdown(results: dict[str, Any]) -> str:
    lines = ["| family | backend (model file) | precision | frames/s b1 | frames/s b8 | x torch (b8) | CPU ms/frame b8 | "
             "peak RSS MiB | image AUROC | load s |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["checkpoint"]: r["fps_b8"] for r in results["rows"] if r["backend"] == "torch" and "fps_b8" in r}
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['family']} | {r['backend']} | {r['precision']} | error: {r['error']} ||||||| ")
            continue
        ratio = f"{r['fps_b8'] / base[r['checkpoint']]:.2f}" if r["checkpoint"] in base else "-"
        lines.append(f"| {r['family']} | {_backend(r)} ({r['source']}) | {r['precision']} | {r['fps_b1']:.1f} | "
                     f"{r['fps_b8']:.1f} | {ratio} | {r['cpu_ms_per_frame_b8']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['image_auroc']:.4f} | {r['load_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
