"""The export bundle's manifest: read, write, hash, verify; engines added on the device.

Torch-free (numpy is not even needed: json + hashlib), Python 3.8+. The bundle is a
directory that the runtime loads on its own:

    BUNDLE/manifest.json            this file's subject (written last)
    BUNDLE/onnx/<component>.onnx    FP32 graph, batch 1 (the seven COMPONENTS, and
                                    `video_expert` when the model has one)
    BUNDLE/onnx/<component>.fp16.onnx
    BUNDLE/calibration/calibration.npz, calibration.json
    BUNDLE/parity.md, parity.json
    BUNDLE/engines/<component>.engine (TensorRT, built on the device; optional)

manifest.json holds: format version; package / torch / onnx / onnxruntime versions and
the opset written; the run it came from; the model config (vocabulary and answers
included) and its hash; each component's I/O (names, shapes, dtypes) and files (fp32,
fp16); the calibration set's summary; the parity summary; TensorRT engines and the device
fingerprint they were built on (empty until built); and the SHA-256 and size of every
other file in the bundle.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

from avqa_edge.errors import AvqaError

MANIFEST = "manifest.json"
FORMAT = 1
KIND = "avqa-edge-bundle"
COMPONENTS = ("visual", "audio", "question", "rmm_audio", "rmm_visual", "avr", "backbone")   # every bundle
# Graphs a bundle holds when its model has that part: the video expert, a second backbone
# (same inputs and outputs) that answers when the video is missing in every segment.
OPTIONAL_COMPONENTS = ("video_expert",)
PRECISIONS = ("fp32", "fp16")

PathLike = Union[str, Path]


def graph_names(present) -> tuple:
    """The component graphs among `present` (names), in pipeline order: the seven
    COMPONENTS, then the optional ones that are there."""
    return COMPONENTS + tuple(c for c in OPTIONAL_COMPONENTS if c in present)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_record(bundle_dir: PathLike, rel: str) -> Dict:
    """{"sha256", "bytes"} of one file of the bundle."""
    path = Path(bundle_dir) / rel
    if not path.is_file():
        raise AvqaError(f"bundle file {rel} not found in {bundle_dir}")
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def hash_files(bundle_dir: PathLike, rels: List[str]) -> Dict[str, Dict]:
    """{rel: {"sha256", "bytes"}} for the given bundle-relative paths, sorted."""
    return {rel: file_record(bundle_dir, rel) for rel in sorted(rels)}


def list_files(bundle_dir: PathLike) -> List[str]:
    """Every regular file under the bundle except the manifest, as POSIX relative paths."""
    root = Path(bundle_dir)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            out.append(p.relative_to(root).as_posix())
    return out


def write_json(path: PathLike, obj) -> None:
    """Atomic JSON write (a temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(str(tmp), str(path))


def read_manifest(bundle_dir: PathLike) -> Dict:
    """manifest.json of a bundle, with a clear error when it is missing or not ours."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise AvqaError(f"bundle {bundle_dir} not found (export one with `avqa-edge export RUN_DIR --out {bundle_dir}`)")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise AvqaError(f"{bundle_dir} holds no {MANIFEST}: not an avqa-edge bundle, or its export did not finish")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise AvqaError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise AvqaError(f"{path} is not an avqa-edge bundle manifest")
    if manifest.get("format") != FORMAT:
        raise AvqaError(f"{path} has bundle format {manifest.get('format')}; this avqa-edge reads format {FORMAT}: "
                        "re-export the bundle with this version")
    return manifest


def write_manifest(bundle_dir: PathLike, manifest: Dict, rehash: bool = True) -> Dict:
    """Write manifest.json; with `rehash`, first record the SHA-256 of every other file."""
    manifest = dict(manifest)
    manifest["kind"], manifest["format"] = KIND, FORMAT
    if rehash:
        manifest["files"] = hash_files(bundle_dir, list_files(bundle_dir))
    write_json(Path(bundle_dir) / MANIFEST, manifest)
    return manifest


def verify_bundle(bundle_dir: PathLike, manifest: Optional[Dict] = None) -> Dict:
    """Check every file the manifest lists against its SHA-256. -> the manifest.

    Raises AvqaError naming each file that is missing or whose hash differs."""
    manifest = manifest if manifest is not None else read_manifest(bundle_dir)
    files = manifest.get("files") or {}
    if not files:
        raise AvqaError(f"{Path(bundle_dir) / MANIFEST} lists no files")
    missing, changed = [], []
    for rel, rec in sorted(files.items()):
        path = Path(bundle_dir) / rel
        if not path.is_file():
            missing.append(rel)
        elif path.stat().st_size != rec.get("bytes") or sha256_file(path) != rec.get("sha256"):
            changed.append(rel)
    if missing or changed:
        parts = []
        if changed:
            parts.append("modified (SHA-256 differs from the manifest): " + ", ".join(changed))
        if missing:
            parts.append("missing: " + ", ".join(missing))
        raise AvqaError(f"bundle {bundle_dir} failed verification; " + "; ".join(parts)
                        + ". Re-export it, or copy it again from the machine that exported it.")
    return manifest


def add_engines(bundle_dir: PathLike, engines: Dict[str, Dict], fingerprint: Dict) -> Dict:
    """Record TensorRT engines built on the device. -> the updated manifest.

    engines: {component: {"file": "engines/<component>.engine", ...any build facts (route,
    precision, seconds, workspace_mib)}}; each file must exist in the bundle and is hashed.
    fingerprint: the device the engines were built on, e.g. {"gpu_name": "Orin", "compute_capability":
    "8.7", "tensorrt": "10.3.0", "cuda": "12.6"}; the TensorRT runner refuses engines whose
    fingerprint does not match the device it runs on.
    The bundle's other files are verified first, so engines are never added to a bundle
    that was modified since export."""
    manifest = verify_bundle(bundle_dir)
    unknown = sorted(set(engines) - set(manifest.get("components", {})))
    if unknown:
        raise AvqaError(f"engines for unknown components {unknown}")
    files = dict(manifest["files"])
    for name, rec in engines.items():
        rel = rec.get("file")
        if not rel:
            raise AvqaError(f"engine record for {name} has no 'file'")
        files[rel] = file_record(bundle_dir, rel)
    manifest["engines"] = {k: dict(v) for k, v in engines.items()}
    manifest["fingerprint"] = dict(fingerprint)
    manifest["files"] = dict(sorted(files.items()))
    return write_manifest(bundle_dir, manifest, rehash=False)


def update_files(bundle_dir: PathLike, manifest: Dict, rels: List[str]) -> Dict:
    """Re-hash the given files (e.g. parity.md after `avqa-edge parity`) and write the manifest."""
    files = dict(manifest.get("files") or {})
    files.update(hash_files(bundle_dir, rels))
    manifest = dict(manifest)
    manifest["files"] = dict(sorted(files.items()))
    return write_manifest(bundle_dir, manifest, rehash=False)


class Bundle:
    """A verified bundle on disk: its manifest and where each component's file is."""

    def __init__(self, path: PathLike, manifest: Dict):
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: PathLike, verify: bool = True) -> "Bundle":
        manifest = read_manifest(path)
        if verify:
            verify_bundle(path, manifest)
        return cls(path, manifest)

    @property
    def components(self) -> Dict[str, Dict]:
        return self.manifest["components"]

    @property
    def graphs(self) -> tuple:
        """The component graphs this bundle holds (COMPONENTS, plus `video_expert` if exported)."""
        return graph_names(self.components)

    @property
    def answers(self) -> List[str]:
        return list(self.manifest["answers"])

    @property
    def vocabulary(self) -> List[str]:
        """Full id -> word list (<pad> = 0, <unk> = 1 first)."""
        return list(self.manifest["vocabulary"])

    @property
    def model_config(self) -> Dict:
        return dict(self.manifest["model"])

    @property
    def parity_passed(self) -> Optional[bool]:
        return (self.manifest.get("parity") or {}).get("passed")

    def graph_path(self, component: str, precision: str = "fp32") -> Path:
        if component not in self.components:
            raise AvqaError(f"bundle {self.path} has no component {component!r}")
        files = self.components[component]["files"]
        if precision not in files:
            raise AvqaError(f"bundle {self.path} has no {precision} graph for {component} (have: {', '.join(files)})")
        return self.path / files[precision]

    def engine_path(self, component: str) -> Path:
        engines = self.manifest.get("engines") or {}
        if component not in engines:
            raise AvqaError(f"bundle {self.path} has no TensorRT engine for {component}: build them on the device "
                            f"with `avqa-edge export --trt --from-bundle {self.path}`")
        return self.path / engines[component]["file"]
