"""The export and parity workflows behind `avqa-edge export` and `avqa-edge parity`: argument
checks up front, then the steps in order, with tables handed to `show` and lines to `log`.
Imports are lazy: the `--trt --from-bundle` and stored-reference paths run on the device
without torch or the training code."""
from pathlib import Path
from typing import Callable, List, Optional

from avqa_edge.errors import ConfigError

Log = Callable[[str], None]
Show = Callable[[object], None]          # prints a rich renderable (a table)


def thresholds(fp32_max_abs_rms: float, fp32_cosine: float, fp16_agreement: float, tie_margin: float):
    """The parity thresholds, checked."""
    from .parity_refs import Thresholds
    if not (fp32_max_abs_rms >= 0 and tie_margin >= 0 and 0 <= fp32_cosine <= 1 and 0 <= fp16_agreement <= 1):
        raise ConfigError("parity thresholds: tolerances must be >= 0, cosine and agreement within [0, 1]")
    return Thresholds(fp32_max_abs_rms=fp32_max_abs_rms, fp32_cosine=fp32_cosine, fp16_agreement=fp16_agreement,
                      tie_margin=tie_margin)


def check_export_args(run_dir: Optional[Path], out: Optional[Path], trt: bool, from_bundle: Optional[Path],
                      workspace_mib: int, prompt: Optional[Path]) -> None:
    """Reject impossible combinations before any work."""
    if workspace_mib < 1:
        raise ConfigError("--workspace-mib must be positive")
    if from_bundle is not None:
        if not trt:
            raise ConfigError("--from-bundle only builds TensorRT engines: add --trt")
        if run_dir is not None or out is not None:
            raise ConfigError("--from-bundle builds into the given bundle: drop RUN_DIR and --out")
        return
    if run_dir is None or out is None:
        raise ConfigError("give RUN_DIR and --out BUNDLE (or --trt --from-bundle BUNDLE on the device)")
    if prompt is not None and not (prompt / "prompts.safetensors").is_file():
        raise ConfigError(f"--prompt {prompt}: no prompts.safetensors there "
                          f"(train one with `avqa-edge train --method prompt --from {run_dir}`)")


def export_and_check(run_dir: Path, out: Path, limits, *, exporter: str, calib_clips: int, overwrite: bool,
                     threads: int, prompt: Optional[Path], log: Log, show: Show) -> None:
    """Export the bundle, gate it on parity with PyTorch (ParityError names the report), and
    add the prompt graphs with their own gate when a prompt run is given."""
    from .bundle_export import export_bundle, summary_table
    from .parity_refs import gate, parity_table
    result = export_bundle(run_dir, out, log=log, exporter=exporter, calib_clips=calib_clips,
                           overwrite=overwrite, threads=threads, thresholds=limits, raise_on_failure=False)
    show(summary_table(result))
    if result.parity is not None:
        show(parity_table(result.parity))
        gate(result.parity, f"the bundle in {out} is marked as failed; see {out / 'parity.md'}")
    if prompt is not None:
        from .prompt_export import add_prompts_to_bundle
        log(f"prompt graphs from {prompt}:")
        report = add_prompts_to_bundle(out, prompt, threads=threads, exporter=exporter, thresholds=limits, log=log)
        show(parity_table(report))
        gate(report, f"the prompt graphs of {out}; see {out / 'parity_prompts.md'}")
        log("prompt parity PASSED")


def build_engines(bundle: Path, workspace_mib: int, timing_cache: Optional[Path], threads: int, log: Log,
                  show: Show) -> None:
    """Build the TensorRT engines on this device, then check them against the stored references."""
    from avqa_edge.errors import AvqaError
    try:
        from .trt_build import build_bundle_engines
    except ImportError as e:
        raise AvqaError(f"the TensorRT engine builder is not available ({e})") from None
    result = build_bundle_engines(bundle, workspace_mib=workspace_mib, timing_cache=timing_cache, log=log,
                                  threads=threads)
    log(f"engines recorded in {bundle / 'manifest.json'}: {', '.join(sorted(result['engines']))}")
    if result.get("parity") is not None:
        print_report(result["parity"], log, show)


def check_parity(bundle: Path, backend: str, precision: Optional[str], run: Optional[Path], limits,
                 scenarios: Optional[List[str]], threads: int, json_path: Optional[Path], log: Log):
    """`backend` against PyTorch: "torch" runs the model live; "ort" / "trt" compare with the
    references stored at export, torch-free, and record the verdict in the manifest.
    -> the report, with info["report"] naming its Markdown file in the bundle."""
    if backend not in ("torch", "ort", "trt"):
        raise ConfigError(f"--backend must be torch, ort or trt, got {backend!r}")
    if backend == "torch" and precision is not None:
        raise ConfigError("--precision applies to --backend ort | trt (the torch gate checks fp32 and fp16)")
    if backend != "torch" and run is not None:
        raise ConfigError("--run applies to --backend torch (ort and trt use the references stored in the bundle)")
    if backend == "torch":
        from .parity import parity_for_bundle
        return parity_for_bundle(bundle, run, thresholds=limits, json_path=json_path, threads=threads,
                                 log=log, scenarios=scenarios)
    from avqa_edge.runtime import atomic

    from . import parity_refs as R
    report = R.stored_parity(bundle, backend, [precision] if precision else None, thresholds=limits,
                             scenarios=scenarios, threads=threads, log=log)
    manifest = R.record_parity(bundle, report, backend)
    rec = (manifest["engines"][next(iter(manifest["engines"]))]["parity"] if backend == "trt"
           else manifest["parity_checks"][f"ort-{'+'.join(report.info['precisions'])}"])
    report.info["report"] = rec["report"][0] if isinstance(rec["report"], list) else rec["report"]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(json_path, report.to_dict())
    return report


def print_report(report, log: Log, show: Show) -> None:
    """The per-output table, the TensorRT-vs-ONNX Runtime table, one line per answer check."""
    from .parity_refs import cross_table, parity_table
    show(parity_table(report))
    if report.cross:
        show(cross_table(report))
    for a in report.agreement:
        log(f"  answers {a.precision}/{a.scenario}: {a.rate:.2%} agree ({a.questions} questions"
            + (f", {len(a.excused)} near ties excused" if a.excused else "") + ")")
    if report.info.get("trt_vs_ort", "compared") != "compared":
        log(f"  {report.info['trt_vs_ort']}")
