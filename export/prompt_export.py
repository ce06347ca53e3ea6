"""The prompt method in the bundle (docs/prompts.md): two backbone graph variants with the trained
prompt bank baked in as constants, their FP16 variants, and the same parity gate.

| graph                 | inputs                                      | outputs               |
|-----------------------|---------------------------------------------|-----------------------|
| backbone_prompt_all   | a (1, T, C), v (1, T, C, H', W'), q (1, 1+L, C) | logits (1, n_answers) |
| backbone_prompt_case  | a, v, q, case int64 (1,) (index into cases) | logits (1, n_answers) |

`prompt_all` concatenates every set (the case is unknown); `prompt_case` gathers one set
from the bank (`prompt_oracle`, or the set a health monitor picks: runtime/pipeline.py). The
features are zero-filled for absent segments (no RMM / AVR), so the prompt path of the
pipeline runs the encoders, the question graph and one of these graphs.

They are recorded under the manifest's `prompts` key, not among the seven `components`:
a bundle without prompts is unchanged, and TensorRT engines are built for the seven graphs
only (the prompt graphs run on ONNX Runtime; building their engines is not done yet).

Parity (same thresholds as export/parity.py): per graph and precision on backbone inputs
from the calibration set (complete features, audio / video zero-filled, and noisy
features), every case for the `case` graph; end to end, the pipeline's answers against
PyTorch under complete / audio_missing / visual_missing for prompt_all and prompt_oracle.
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch
from torch import nn

from avqa_edge import __version__
from avqa_edge.calibration.calibset import CalibrationSet
from avqa_edge.errors import AvqaError
from avqa_edge.runtime import bundle as B
from avqa_edge.runtime import signal as sig
from avqa_edge.runtime.pipeline import PROMPT_COMPONENTS, Pipeline
from avqa_edge.runtime.runners import OrtRunner

from ..toolkit.model.prompts import CONDITION_CASE, PromptBank, prompted_logits
from . import components as C
from . import onnx_export as OX
from . import parity as P


class PromptAllGraph(nn.Module):
    def __init__(self, model, bank: PromptBank):
        super().__init__()
        self.backbone = model.backbone
        (pa, pv), kv = bank.concat_all(1)
        self.register_buffer("pa", pa.detach().clone(), persistent=False)   # (1, K*P_in, C)
        self.register_buffer("pv", pv.detach().clone(), persistent=False)
        self.register_buffer("kv", kv.detach().clone(), persistent=False)   # (1, K*P_attn, C)

    def forward(self, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """a (1, T, C), v (1, T, C, H', W'), q (1, 1+L, C) -> logits (1, n_answers), every prompt set."""
        return self.backbone(a, v, q, prefix_kv=self.kv, prompts=(self.pa, self.pv))


class PromptCaseGraph(nn.Module):
    def __init__(self, model, bank: PromptBank):
        super().__init__()
        self.backbone = model.backbone
        self.register_buffer("pa", bank.input_a.detach().clone(), persistent=False)   # (K, P_in, C)
        self.register_buffer("pv", bank.input_v.detach().clone(), persistent=False)
        self.register_buffer("kv", bank.attn.detach().clone(), persistent=False)      # (K, P_attn, C)

    def forward(self, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor, case: torch.Tensor) -> torch.Tensor:
        """a, v, q, case int64 (1,) -> logits (1, n_answers) with that case's prompt set."""
        pa, pv, kv = (torch.index_select(x, 0, case) for x in (self.pa, self.pv, self.kv))   # (1, P, C)
        return self.backbone(a, v, q, prefix_kv=kv, prompts=(pa, pv))


WRAPPERS = {"backbone_prompt_all": PromptAllGraph, "backbone_prompt_case": PromptCaseGraph}


def check_exportable(bank: PromptBank) -> None:
    if not (bank.cfg.n_input and bank.cfg.n_attn):
        raise AvqaError("the prompt graphs are exported for banks with both input-level and key/value prompts")


def io_specs(model) -> Dict[str, Tuple[List[C.TensorSpec], List[C.TensorSpec]]]:
    inputs, outputs = C.io_specs(model)["backbone"]
    return {"backbone_prompt_all": (inputs, outputs),
            "backbone_prompt_case": (inputs + [C.TensorSpec("case", (1,), "int64")], outputs)}


def export_prompt_graph(model, bank: PromptBank, name: str, path: Path, exporter: str = "auto") -> OX.Artifact:
    """One prompt graph (FP32, batch 1), exported and checked like the seven components."""
    import time
    specs = io_specs(model)[name]
    module = WRAPPERS[name](model, bank).eval()
    args = C.example_inputs(specs[0][:3]) + ((torch.tensor([1], dtype=torch.int64),) if name.endswith("case") else ())
    t0 = time.perf_counter()
    proto, used = None, ""
    for dyn in ((True, False) if exporter == "auto" else ((exporter == "dynamo"),)):
        proto = OX._export_once(module, args, path, [s.name for s in specs[0]], [s.name for s in specs[1]], OX.OPSET, dyn)
        used = "dynamo" if dyn else "torchscript"
        if OX.written_opset(proto) == OX.OPSET:
            break
    if OX.written_opset(proto) != OX.OPSET:
        raise AvqaError(f"{name}: could not write opset {OX.OPSET}")
    OX.add_metadata(proto, {"avqa_edge.component": name, "avqa_edge.config_hash": model.cfg.hash(),
                            "avqa_edge.version": __version__, "avqa_edge.precision": "fp32",
                            "avqa_edge.exporter": used, "avqa_edge.batch": "1",
                            "avqa_edge.prompt_cases": ",".join(bank.cfg.cases)})
    OX.check_graph(proto, name, specs, OX.OPSET, model.cfg.hash())
    onnx.save(proto, str(path))
    return OX.Artifact(path=path.name, component=name, precision="fp32", bytes=path.stat().st_size,
                       seconds=round(time.perf_counter() - t0, 3), opset=OX.OPSET, exporter=used, nodes=len(proto.graph.node))


# ---- parity ----------------------------------------------------------------------------------------

@torch.no_grad()
def component_cases(model, bank: PromptBank, calib: CalibrationSet, n_samples: int = 8) -> List[Dict[str, np.ndarray]]:
    """Backbone feeds from calibration clips: complete, audio zero-filled, video zero-filled,
    noisy (0.5 x the batch's feature std), cycling; each with a case index (cycling)."""
    feeds = []
    first_q = {}
    for i, c in enumerate(calib.clip.tolist()):
        first_q.setdefault(c, i)
    gen = torch.Generator().manual_seed(0)
    for k, clip in enumerate(sorted(first_q)[:n_samples]):
        frames = torch.from_numpy(calib.frames[clip:clip + 1])
        audio = torch.from_numpy(sig.pcm16_to_float(calib.audio[clip:clip + 1]))
        tokens = torch.from_numpy(calib.tokens[first_q[clip]:first_q[clip] + 1])
        a, v, q = model.audio_encoder(audio), model.visual_encoder(frames), model.question_encoder(tokens)
        kind = k % 4
        if kind == 1:
            a = torch.zeros_like(a)
        elif kind == 2:
            v = torch.zeros_like(v)
        elif kind == 3:
            a = a + 0.5 * a.std() * torch.randn(a.shape, generator=gen)
            v = v + 0.5 * v.std() * torch.randn(v.shape, generator=gen)
        feeds.append({"a": a.numpy(), "v": v.numpy(), "q": q.numpy(),
                      "case": np.array([k % len(bank.cfg.cases)], np.int64)})
    return feeds


@torch.no_grad()
def reference(model, bank: PromptBank, name: str, feed: Dict[str, np.ndarray]) -> np.ndarray:
    a, v, q = (torch.from_numpy(feed[k]) for k in ("a", "v", "q"))
    sel = bank.concat_all(1) if name == "backbone_prompt_all" else bank.select(torch.from_numpy(feed["case"]))
    return prompted_logits(model.backbone, a, v, q, sel).numpy()


@torch.no_grad()
def torch_logits(model, bank: PromptBank, calib: CalibrationSet, scenario: str, method: str) -> np.ndarray:
    """(Q, n_answers): the PyTorch prompt path on the calibration set (zero-filled features)."""
    ma_all, mv_all = P._masks(scenario, calib.n_clips, model.cfg.t_segments)
    out = []
    for s in range(0, calib.n_questions, 64):
        qs = np.arange(s, min(s + 64, calib.n_questions))
        clips, inverse = np.unique(calib.clip[qs], return_inverse=True)
        batch = {"frames": torch.from_numpy(calib.frames[clips]), "audio": torch.from_numpy(sig.pcm16_to_float(calib.audio[clips])),
                 "tokens": torch.from_numpy(calib.tokens[qs]), "clip_index": torch.from_numpy(inverse.reshape(-1).astype(np.int64))}
        f, _, _ = model.encode(batch, torch.from_numpy(ma_all[clips]), torch.from_numpy(mv_all[clips]))
        case = CONDITION_CASE[P.SCENARIOS[scenario][0]]
        sel = bank.concat_all(len(qs)) if method == "prompt_all" else bank.select(bank.case_index([case] * len(qs)))
        out.append(prompted_logits(model.backbone, f.a, f.v, f.q, sel).numpy())
    return np.concatenate(out)


def run_prompt_parity(model, bank: PromptBank, graphs: Dict[str, Dict[str, Path]], base_graphs: Dict[str, Dict[str, Path]],
                      calib: CalibrationSet, vocabulary, answers, thresholds: Optional[P.Thresholds] = None,
                      scenarios=("complete", "audio_missing", "visual_missing"), threads: int = 0,
                      log: Callable[[str], None] = lambda *_: None) -> P.ParityReport:
    """graphs / base_graphs: {precision: {component: path}} of the prompt graphs / the bundle's own."""
    th = thresholds or P.Thresholds()
    model.eval()
    feeds = component_cases(model, bank, calib)
    outputs, agree = [], []
    refs = {s: {m: torch_logits(model, bank, calib, s, m) for m in ("prompt_all", "prompt_oracle")} for s in scenarios}
    for prec in graphs:
        runners = {c: OrtRunner(p, threads=threads, providers=[P.PROVIDER], name=f"{c} ({prec})")
                   for c, p in {**base_graphs[prec], **graphs[prec]}.items()}
        pipe = Pipeline(runners, vocabulary, answers, model.cfg.to_dict(), name=f"ort-{prec}", prompt_cases=bank.cfg.cases)
        with pipe:
            for name in PROMPT_COMPONENTS:
                feed_of = (lambda f: {k: f[k] for k in ("a", "v", "q")}) if name == "backbone_prompt_all" else (lambda f: f)
                got = [runners[name].infer(feed_of(f))["logits"] for f in feeds]
                outputs.append(P.compare(name, "logits", prec, [reference(model, bank, name, f) for f in feeds], got, th))
            for s in scenarios:
                for method in ("prompt_all", "prompt_oracle"):
                    got = pipeline_logits(pipe, calib, s, method)
                    thr = th.fp32_agreement if prec == "fp32" else th.fp16_agreement
                    agree.append(P.agreement(f"{s}/{method}", prec, refs[s][method], got, answers, thr, th.margin(prec)))
                    log(f"  prompt parity {prec} {s} {method}: {agree[-1].rate:.2%} answers agree")
    info = {"provider": P.PROVIDER, "config_hash": model.cfg.hash(), "clips": calib.n_clips,
            "questions": calib.n_questions, "component_samples": len(feeds), "cases": list(bank.cfg.cases)}
    return P.ParityReport(outputs, agree, th, info)


def pipeline_logits(pipe: Pipeline, calib: CalibrationSet, scenario: str, method: str) -> np.ndarray:
    """The pipeline's prompt path; prompt_oracle is told the case (the scenario's), as at
    serve time when the health monitor names the failed sensor."""
    return P.pipeline_logits(pipe, calib, scenario, method, case=CONDITION_CASE[P.SCENARIOS[scenario][0]])


# ---- into a bundle -----------------------------------------------------------------------------------

def add_prompts_to_bundle(bundle_dir, prompt_run, threads: int = 0, exporter: str = "auto",
                          thresholds: Optional[P.Thresholds] = None, log: Callable[[str], None] = print) -> P.ParityReport:
    """Export a prompt run's graphs into a bundle of its base run, run their parity gate, and
    record them (files hashed) under the manifest's `prompts`. -> the parity report."""
    from ..toolkit.checkpoint import load_model
    from ..toolkit.prompt_train import load_prompts
    bundle = B.Bundle.open(bundle_dir, verify=True)
    run = Path((bundle.manifest.get("run") or {}).get("dir", ""))
    model, _ = load_model(run)
    bank, pconfig = load_prompts(prompt_run, run)
    check_exportable(bank)
    specs = io_specs(model)
    files, comps = [], {}
    for name in PROMPT_COMPONENTS:
        rel32, rel16 = f"onnx/{name}.onnx", f"onnx/{name}.fp16.onnx"
        a32 = export_prompt_graph(model, bank, name, bundle.path / rel32, exporter)
        a16 = OX.export_fp16(bundle.path / rel32, bundle.path / rel16, name, specs[name], model.cfg.hash())
        log(f"  wrote {rel32} ({a32.bytes} B, {a32.seconds:.2f} s, {a32.exporter}) and {rel16}")
        files += [rel32, rel16]
        comps[name] = {"inputs": [s.to_dict() for s in specs[name][0]], "outputs": [s.to_dict() for s in specs[name][1]],
                       "files": {"fp32": rel32, "fp16": rel16}, "exporter": a32.exporter, "opset": a32.opset}
    calib = CalibrationSet.load(bundle.path / bundle.manifest["calibration"]["dir"])
    graphs = {p: {c: bundle.path / comps[c]["files"][p] for c in PROMPT_COMPONENTS} for p in B.PRECISIONS}
    base = {p: {c: bundle.graph_path(c, p) for c in bundle.graphs} for p in B.PRECISIONS}
    report = run_prompt_parity(model, bank, graphs, base, calib, bundle.vocabulary, bundle.answers, thresholds,
                               threads=threads, log=log)
    (bundle.path / "parity_prompts.md").write_text(report.to_markdown())
    files.append("parity_prompts.md")
    manifest = dict(bundle.manifest, prompts={"run": str(Path(prompt_run).resolve()), "cases": list(bank.cfg.cases),
                                              "prompt": pconfig["prompt"], "components": comps,
                                              "features": "zero-filled (no RMM / AVR)",
                                              "parity": dict(report.summary(), report=["parity_prompts.md"])})
    B.update_files(bundle.path, manifest, files)
    return report
