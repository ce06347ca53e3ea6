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

Trust (`verify_bundle`, run before anything else of the bundle is read):
- every path the manifest names (`files`, component / prompt graphs, engines, the calibration
  set) is relative and stays inside the bundle: no absolute path, no `..`, no symlink out;
- every graph, engine and calibration file the runtime loads is listed in `files`, and every
  listed file matches its SHA-256 and size;
- the model config, vocabulary and answers agree with `config_hash`, and so does every ONNX
  graph's `avqa_edge.config_hash` metadata (read here without onnx or onnxruntime), so an
  edited answer list or a graph from another model is refused.
"""
import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Dict, List, Optional, Tuple, Union

from avqa_edge.errors import BundleError

from . import atomic

MANIFEST = "manifest.json"
FORMAT = 1
KIND = "avqa-edge-bundle"
COMPONENTS = ("visual", "audio", "question", "rmm_audio", "rmm_visual", "avr", "backbone")   # every bundle
# Graphs a bundle holds when its model has that part: the video expert, a second backbone
# (same inputs and outputs) that answers when the video is missing in every segment.
OPTIONAL_COMPONENTS = ("video_expert",)
PRECISIONS = ("fp32", "fp16")
CALIBRATION_DIR = "calibration"
CALIBRATION_FILES = ("calibration.npz", "calibration.json")     # calibration/calibset.py's NPZ, META
PAD, UNK = "<pad>", "<unk>"                                      # runtime/text.py: ids 0 and 1
# toolkit/config.py's LEGACY_DEFAULTS: fields added to the model config after the first runs;
# a config at that value hashes without the field (tests/test_device_trust.py holds the two equal).
LEGACY_MODEL_DEFAULTS = {"audio_heads": 1, "avr_start": None, "video_expert": False}

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
    path = inside(bundle_dir, rel, f"file {rel!r}")
    if not path.is_file():
        raise BundleError(f"bundle file {rel} not found in {bundle_dir}")
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


write_json = atomic.write_json           # the manifest and reports: temp file, fsync, rename


def read_manifest(bundle_dir: PathLike) -> Dict:
    """manifest.json of a bundle, with a clear error when it is missing or not ours."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle {bundle_dir} not found (export one with `avqa-edge export RUN_DIR --out {bundle_dir}`)")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} holds no {MANIFEST}: not an avqa-edge bundle, or its export did not finish")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise BundleError(f"{path} is not an avqa-edge bundle manifest")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} has bundle format {manifest.get('format')}; this avqa-edge reads format {FORMAT}: "
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


# ---- trust: paths, listing, hashes, model consistency ------------------------------------------

def inside(bundle_dir: PathLike, rel, what: str) -> Path:
    """bundle_dir / rel, refused unless `rel` is a relative POSIX path that stays inside the
    bundle: not absolute, no `..`, no symlink leading out. `what` names the manifest field."""
    if not isinstance(rel, str) or not rel.strip():
        raise BundleError(f"{MANIFEST}: {what} is {rel!r}, not a path inside the bundle")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(f"{MANIFEST}: {what} = {rel!r} is an absolute path; bundle files must be relative "
                          "to the bundle directory")
    if ".." in pure.parts:
        raise BundleError(f"{MANIFEST}: {what} = {rel!r} points outside the bundle ('..')")
    root = Path(bundle_dir).resolve()
    real = (root / pure).resolve()
    if real != root and root not in real.parents:
        raise BundleError(f"{MANIFEST}: {what} = {rel!r} is a symlink leading out of the bundle (to {real})")
    return Path(bundle_dir) / pure


def referenced_files(manifest: Dict) -> Dict[str, str]:
    """{bundle-relative path: the manifest field naming it} for every file the runtime loads:
    component and prompt graphs, TensorRT engines and the calibration set."""
    refs: Dict[str, str] = {}

    def add(rel, what: str) -> None:
        if not isinstance(rel, str):
            raise BundleError(f"{MANIFEST}: {what} is {rel!r}, not a path inside the bundle")
        refs.setdefault(rel, what)

    def graphs(section: str, comps) -> None:
        if not isinstance(comps, dict):
            raise BundleError(f"{MANIFEST}: {section} must be an object of components")
        for name, comp in comps.items():
            files = comp.get("files") if isinstance(comp, dict) else None
            if not isinstance(files, dict):
                raise BundleError(f"{MANIFEST}: {section}.{name}.files must be an object of graph files")
            for precision, rel in files.items():
                add(rel, f"{section}.{name}.files.{precision}")

    graphs("components", manifest.get("components") or {})
    prompts = manifest.get("prompts") or {}
    if prompts:
        graphs("prompts.components", prompts.get("components") or {})
    engines = manifest.get("engines") or {}
    if not isinstance(engines, dict):
        raise BundleError(f"{MANIFEST}: engines must be an object")
    for name, rec in engines.items():
        add(rec.get("file") if isinstance(rec, dict) else None, f"engines.{name}.file")
    if "calibration" in manifest or "model" in manifest:           # every exported bundle has one
        cdir = (manifest.get("calibration") or {}).get("dir", CALIBRATION_DIR)
        if cdir != CALIBRATION_DIR:
            raise BundleError(f"{MANIFEST}: calibration.dir = {cdir!r}; the runtime reads the calibration set "
                              f"from {CALIBRATION_DIR!r}")
        for name in CALIBRATION_FILES:
            add(f"{CALIBRATION_DIR}/{name}", "calibration")
    return refs


def config_hash(model: Dict) -> str:
    """`ModelConfig.hash()` of a manifest's `model` (a config's to_dict()), torch-free."""
    d = {"arch": 1, **LEGACY_MODEL_DEFAULTS, **model}
    d = {k: v for k, v in d.items() if LEGACY_MODEL_DEFAULTS.get(k, object()) != v}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _varint(f: BinaryIO) -> Optional[int]:
    """One protobuf varint from `f`; None at the end of the file."""
    shift, out = 0, 0
    while True:
        b = f.read(1)
        if not b:
            if shift:
                raise ValueError("truncated varint")
            return None
        out |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return out
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(f: BinaryIO, end: int):
    """(field number, offset, length) of each length-delimited field of the protobuf message
    in `f` up to `end`; other fields, and whatever the caller does not read, are skipped by seeking."""
    while f.tell() < end:
        tag = _varint(f)
        if tag is None:
            return
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(f)
        elif wire == 1:
            f.seek(8, os.SEEK_CUR)
        elif wire == 5:
            f.seek(4, os.SEEK_CUR)
        elif wire == 2:
            n = _varint(f)
            if n is None or f.tell() + n > end:
                raise ValueError("truncated field")
            start = f.tell()
            yield field, start, n
            f.seek(start + n)           # past the field, whatever the caller read of it
        else:
            raise ValueError(f"wire type {wire}")


ONNX_METADATA_FIELD = 14        # onnx.proto: ModelProto.metadata_props (StringStringEntryProto: key = 1, value = 2)


def onnx_metadata(path: PathLike) -> Dict[str, str]:
    """An ONNX file's metadata_props as {key: value}, read from the protobuf wire format
    without onnx or onnxruntime (the graph itself is skipped, not parsed)."""
    path = Path(path)
    out: Dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            for field, pos, n in _fields(f, size):
                if field != ONNX_METADATA_FIELD:
                    continue
                entry: Dict[int, str] = {}
                for sub, spos, sn in _fields(f, pos + n):
                    f.seek(spos)
                    entry[sub] = f.read(sn).decode("utf-8")
                out[entry.get(1, "")] = entry.get(2, "")
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not a readable ONNX file ({e})") from None
    return out


def _onnx_graphs(manifest: Dict) -> List[Tuple[str, str]]:
    """(component, file) of every ONNX graph the manifest names."""
    out = []
    for section in (manifest.get("components") or {}, (manifest.get("prompts") or {}).get("components") or {}):
        for name, comp in section.items():
            out += [(name, rel) for rel in comp["files"].values() if rel.endswith(".onnx")]
    return out


def check_model(bundle_dir: PathLike, manifest: Dict) -> None:
    """The model config, vocabulary and answers agree with `config_hash`, and every ONNX graph
    was exported from that config (its `avqa_edge.config_hash` and `avqa_edge.component`).
    A manifest without any of these (a graphs-only bundle) has nothing to check."""
    keys = ("model", "config_hash", "vocabulary", "answers")
    if not any(k in manifest for k in keys):
        return
    absent = [k for k in keys if k not in manifest]
    if absent:
        raise BundleError(f"{MANIFEST} has no {', '.join(absent)}: re-export the bundle")
    model, want = manifest["model"], manifest["config_hash"]
    if not isinstance(model, dict):
        raise BundleError(f"{MANIFEST}: model must be an object (the model config)")
    got = config_hash(model)
    if got != want:
        raise BundleError(f"{MANIFEST}: the model config (model) hashes to {got}, but config_hash is {want}: "
                          "the manifest was edited after export")
    if manifest["answers"] != model.get("answers"):
        raise BundleError(f"{MANIFEST}: answers differ from the model config's answers (model.answers): the "
                          "answer list was edited after export; answers would be mislabelled")
    if manifest["vocabulary"] != [PAD, UNK] + list(model.get("vocab") or []):
        raise BundleError(f"{MANIFEST}: vocabulary differs from the model config's (<pad>, <unk> + model.vocab): "
                          "the vocabulary was edited after export")
    for name, rel in _onnx_graphs(manifest):
        meta = onnx_metadata(Path(bundle_dir) / rel)
        if meta.get("avqa_edge.config_hash") != want:
            raise BundleError(f"{rel} was exported from model config {meta.get('avqa_edge.config_hash')!r}, the "
                              f"manifest's config_hash is {want}: the graph or the manifest comes from another model")
        if meta.get("avqa_edge.component") != name:
            raise BundleError(f"{rel} is the graph of {meta.get('avqa_edge.component')!r}, but {MANIFEST} names it "
                              f"for component {name!r}")


def check_paths(bundle_dir: PathLike, manifest: Dict) -> Dict[str, Dict]:
    """Every listed and every referenced path inside the bundle, every referenced file listed.
    -> `files`. Reads nothing but the directory entries."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{Path(bundle_dir) / MANIFEST} lists no files")
    for rel, rec in files.items():
        inside(bundle_dir, rel, "files entry")
        if not isinstance(rec, dict) or "sha256" not in rec or "bytes" not in rec:
            raise BundleError(f"{MANIFEST}: files entry {rel!r} must hold its sha256 and bytes")
    for rel, what in sorted(referenced_files(manifest).items()):
        inside(bundle_dir, rel, what)
        if rel not in files:
            raise BundleError(f"{MANIFEST}: {what} = {rel!r} is not listed in files (with its SHA-256), so it "
                              "cannot be verified: re-export the bundle")
    return files


def verify_bundle(bundle_dir: PathLike, manifest: Optional[Dict] = None) -> Dict:
    """Check the bundle before anything of it is read (see the module docstring): paths,
    listing, every listed file's SHA-256 and size, then the model's consistency. -> the manifest.

    Raises BundleError naming the field or each file that is missing or whose hash differs."""
    manifest = manifest if manifest is not None else read_manifest(bundle_dir)
    files = check_paths(bundle_dir, manifest)
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
        raise BundleError(f"bundle {bundle_dir} failed verification; " + "; ".join(parts)
                          + ". Re-export it, or copy it again from the machine that exported it.")
    check_model(bundle_dir, manifest)
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
        raise BundleError(f"engines for unknown components {unknown}")
    files = dict(manifest["files"])
    for name, rec in engines.items():
        rel = rec.get("file")
        if not rel:
            raise BundleError(f"engine record for {name} has no 'file'")
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

    def _field(self, key: str):
        if key not in self.manifest:
            raise BundleError(f"{self.path / MANIFEST} has no {key}: not a bundle the runtime can serve; re-export it")
        return self.manifest[key]

    @property
    def answers(self) -> List[str]:
        return list(self._field("answers"))

    @property
    def vocabulary(self) -> List[str]:
        """Full id -> word list (<pad> = 0, <unk> = 1 first)."""
        return list(self._field("vocabulary"))

    @property
    def model_config(self) -> Dict:
        return dict(self._field("model"))

    @property
    def parity_passed(self) -> Optional[bool]:
        return (self.manifest.get("parity") or {}).get("passed")

    def graph_path(self, component: str, precision: str = "fp32") -> Path:
        if component not in self.components:
            raise BundleError(f"bundle {self.path} has no component {component!r}")
        files = self.components[component]["files"]
        if precision not in files:
            raise BundleError(f"bundle {self.path} has no {precision} graph for {component} (have: {', '.join(files)})")
        return inside(self.path, files[precision], f"components.{component}.files.{precision}")

    def engine_path(self, component: str) -> Path:
        engines = self.manifest.get("engines") or {}
        if component not in engines:
            raise BundleError(f"bundle {self.path} has no TensorRT engine for {component}: build them on the device "
                              f"with `avqa-edge export --trt --from-bundle {self.path}`")
        return inside(self.path, engines[component]["file"], f"engines.{component}.file")
