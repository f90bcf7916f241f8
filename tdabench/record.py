"""The result record: one typed dataclass, written by the runner and read everywhere else.

A record is one JSON file per (task, spec, method, config, seed, correlation); :func:`save`
writes it, :func:`load` / :func:`from_dict` read it back as a :class:`Record`, checking every
field's type and upgrading older schemas (or refusing them with one line that says why).
Everything a table or a figure needs is stored at write time (whether the method is a
reference, its config defaults, where the record was made), so the same file renders the same
whatever is installed.

JSON layout (schema 3): ``metrics`` holds ``lds`` and ``recall@<k>``; ``cost`` holds one object
per timed phase (``train``, ``fit``, ``score``, ``score_groups``; ``cached: true`` where the
phase loaded an artefact instead of computing it), ``score_per_target_s`` and
``storage_bytes``. ``tdabench.load_records(path)`` flattens records into a DataFrame.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import tempfile
import types
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from tdabench.errors import UserError
from tdabench.protocol import RECALL_KS, protocol_hash
from tdabench.store import atomic_write_json, atomic_write_npz, cache_dir

SCHEMA = 3
RESULTS_ENV = "TDABENCH_RESULTS"
REFERENCE_RESULTS = Path("results")  # the committed reference set: only `tdabench reproduce` writes it
# Schema 2 hashed the protocol's English text; these are the hashes of the only text it had,
# which is protocol version 1 (a record with another hash was made under an earlier protocol).
SCHEMA2_PROTOCOLS = {"14e7f769": "spearman", "77feba30": "kendall", "945f1476": "pearson"}


class RecordError(UserError, ValueError):
    """A file that is not a readable tdabench result record (the message says why)."""


class NotARecord(RecordError):
    """A JSON file that is no result record at all (a manifest, a list): tree walkers skip it
    silently, unlike a record that is damaged or of an unknown schema."""


def record_files(root: Path) -> list[Path]:
    """The JSON files a record reader looks at under ``root``: ``root`` itself when it is a
    file, else every ``*.json`` below it, sorted."""
    return [root] if root.is_file() else sorted(root.rglob("*.json"))


class RecordWriteError(UserError, ValueError):
    """The results directory cannot take a record (the message names it and the fix)."""


@dataclass
class Phase:
    """The cost of one timed phase (seconds, bytes). ``cached``: the phase loaded an artefact
    made earlier (a trained model, a bank) instead of computing it: its time is not its cost.
    ``original``: the method's own account of what it trained (AirRep's ``cost.json``: training
    bank, steps, seconds), as measured when it trained; None when the method keeps none."""

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    peak_rss_delta_bytes: int
    cuda_peak_bytes: int | None = None
    cached: bool = False
    original: dict[str, Any] | None = None


@dataclass
class Storage:
    disk: int
    memory: int


@dataclass
class Cost:
    """Timed phases by name, inference time per target, what the method keeps, and the device
    the phases ran on (``tdabench.device.describe``: device, dtype, GPU name; None in records
    made before devices were recorded)."""

    phases: dict[str, Phase]
    score_per_target_s: float
    storage: Storage
    device: dict[str, Any] | None = None

    @staticmethod
    def _in(obj: dict) -> dict:
        rest = {k: v for k, v in obj.items() if k not in ("score_per_target_s", "storage_bytes", "device")}
        return {"phases": rest, "score_per_target_s": obj.get("score_per_target_s"),
                "storage": obj.get("storage_bytes"), "device": obj.get("device")}

    def _out(self) -> dict:
        device = {"device": self.device} if self.device is not None else {}
        return {**{k: _to_json(v) for k, v in self.phases.items()},
                "score_per_target_s": self.score_per_target_s, "storage_bytes": _to_json(self.storage),
                **device}


@dataclass
class Lds:
    mean: float
    ci95: list[float]
    n_targets: int
    n_subsets: int
    ci95_subsets: list[float] | None = None


@dataclass
class Recall:
    value: float
    chance: float


@dataclass
class PaperLds:
    """The paper-comparable LDS of a published bank: all its subsets, the method authors'
    evaluation aggregation (``group_score`` says which)."""

    mean: float
    ci95: list[float]
    n_targets: int
    n_subsets: int
    group_score: str
    # What the method's authors publish for this benchmark, as they state it (not measured here)
    published: str | None = None


@dataclass
class Metrics:
    """LDS on the test subsets and recall@k (keys ``recall@<k>`` in JSON); on published ground
    truth also ``lds_all_subsets``, named the ``headline``."""

    lds: Lds
    recall: dict[int, Recall]
    lds_all_subsets: PaperLds | None = None
    headline: str | None = None

    @staticmethod
    def _in(obj: dict) -> dict:
        recall = {int(k.split("@", 1)[1]): v for k, v in obj.items()
                  if k.startswith("recall@") and k.split("@", 1)[1].isdigit()}
        for k in RECALL_KS:
            if k not in recall:
                raise RecordError(f"incomplete record: no metrics.recall@{k}")
        extra = {k: obj[k] for k in ("lds_all_subsets", "headline") if k in obj}
        return {"lds": obj.get("lds"), "recall": recall, **extra}

    def _out(self) -> dict:
        extra = {"lds_all_subsets": _to_json(self.lds_all_subsets),
                 "headline": self.headline} if self.headline else {}
        return {"lds": _to_json(self.lds), **{f"recall@{k}": _to_json(r) for k, r in self.recall.items()},
                **extra}


@dataclass
class NoiseCeiling:
    split_half_r: float
    ceiling: float
    ceiling_ci95: list[float]


@dataclass
class Bank:
    """The ground-truth bank the LDS was measured on."""

    path: str
    n_subsets: int
    n_test_subsets: int
    n_seeds: int
    fraction: float
    source: str
    subset_sizes: list[int]
    n_pool: int
    n_targets: int
    noise_ceiling: NoiseCeiling | None = None


@dataclass
class MethodInfo:
    """What rendering needs to know about the method, stored when the record is written:
    ``reference`` (a datamodel: its cost is retraining; shown apart, never ranked), its
    Config's fields in order with their defaults (rows list only non-default fields) and its
    ``family`` (:data:`tdabench.method.FAMILIES`; None in records written before it was stored)."""

    reference: bool
    config_fields: list[str]
    config_defaults: dict[str, Any]
    family: str | None = None
    version: int = 1  # the adapter's VERSION (records made before versions were stored: 1)


@dataclass
class Host:
    hostname: str | None
    platform: str
    cpus: int | None


@dataclass
class Code:
    """The tdabench source the record was made with: its git commit where it is a checkout,
    and whether it had uncommitted changes (None: not a git checkout)."""

    commit: str | None = None
    dirty: bool | None = None


@dataclass
class Record:
    task: str
    preset: str
    spec_hash: str
    spec: dict[str, Any]
    bank: Bank
    method: str
    config: dict[str, Any]
    config_hash: str
    seed: int
    method_info: MethodInfo | None  # None: a schema-2 record, written before it was stored
    protocol: dict[str, str]
    protocol_version: int
    protocol_hash: str
    metrics: Metrics
    per_target_lds: list[float]
    cost: Cost
    versions: dict[str, str]
    host: Host
    code: Code
    created: str
    schema: int = SCHEMA
    # How the config's values were chosen, when they were tuned (``results/configs.json``'s
    # ``_tuned`` entry: the fields tuned, on which subsets, the grid, the choice, the CSVs)
    tuning: dict[str, Any] | None = None
    # What the config's host-dependent values (``auto``) resolved to in this run, e.g. AirRep's
    # encoder precision; the config and its hash keep ``auto``
    resolved: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            parse_created(self.created)
        except ValueError:
            raise RecordError(f"bad record: created {self.created!r} is not an ISO timestamp") from None
        if len(self.metrics.lds.ci95) != 2:
            raise RecordError("bad record: metrics.lds.ci95 is not a pair of numbers")

    @property
    def created_at(self) -> dt.datetime:
        return parse_created(self.created)

    @property
    def correlation(self) -> str:
        return self.protocol["correlation"].split()[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what :func:`save` writes)."""
        return _to_json(self)


# ----------------------------------------------------------------------------- typed conversion

def _to_json(obj: Any) -> Any:
    if hasattr(obj, "_out"):
        return obj._out()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    return obj


def _kind(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected)).replace("NoneType", "null")


def _build(expected: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as ``expected`` (a type hint), or RecordError naming the field."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if expected is Any:
        return value
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            raise RecordError(f"bad record: {where} is {type(value).__name__}, expected an object")
        return _build_dataclass(expected, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"bad record: {where} is {type(value).__name__}, expected a list")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"bad record: {where} is {type(value).__name__}, expected an object")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    ok = (isinstance(value, (int, float)) if expected is float else
          isinstance(value, expected)) and (expected is bool or not isinstance(value, bool))
    if not ok:
        raise RecordError(f"bad record: {where} is {type(value).__name__}, expected {_kind(expected)}")
    return float(value) if expected is float else value


def _build_dataclass(cls: type, obj: dict, where: str) -> Any:
    if hasattr(cls, "_in"):
        obj = cls._in(obj)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name in obj and not (obj[f.name] is None and f.default is not dataclasses.MISSING):
            kwargs[f.name] = _build(hints[f.name], obj[f.name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"incomplete record: no {name}")
    return cls(**kwargs)


# ----------------------------------------------------------------------------- reading

def parse_created(text: str) -> dt.datetime:
    """An ISO timestamp as an aware datetime (naive ones are taken as UTC)."""
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _upgrade_2(obj: dict) -> dict:
    """A schema-2 record in schema 3: the protocol version from its text's hash; no method
    info, host name or commit (they were not recorded); no phase marked cached."""
    correlation = SCHEMA2_PROTOCOLS.get(obj.get("protocol_hash"))
    if correlation is None:
        raise RecordError(f"schema-2 record made under an earlier protocol (protocol_hash "
                          f"{obj.get('protocol_hash')!r}, no version covers it): rerun the method")
    host = obj.get("host") if isinstance(obj.get("host"), dict) else {}
    return {**obj, "schema": 3, "protocol_version": 1, "protocol_hash": protocol_hash(correlation, 1),
            "method_info": None, "host": {"hostname": None, **host}, "code": {}}


def from_dict(obj: Any) -> Record:
    """A parsed JSON record as a :class:`Record`: schema 3 as is, schema 2 upgraded; anything
    else refused with a :class:`RecordError` whose one-line message says why."""
    if not isinstance(obj, dict):
        raise NotARecord(f"not a tdabench result record (a JSON {type(obj).__name__}, not an object)")
    if "spec_hash" not in obj or "metrics" not in obj:
        raise NotARecord("not a tdabench result record (no spec_hash or metrics)")
    schema = obj.get("schema")
    if schema == 2:
        obj = _upgrade_2(obj)
    elif schema != SCHEMA:
        newer = isinstance(schema, int) and schema > SCHEMA
        raise RecordError(f"record schema {schema!r} is not readable by this tdabench (it reads 2 "
                          f"and {SCHEMA}): " + ("upgrade tdabench" if newer else "rerun the method"))
    return _build_dataclass(Record, obj, "")


def load(path: Path | str) -> Record:
    """Read one record file (see :func:`from_dict`); RecordError names the file's problem."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"not readable JSON ({err})") from None
    return from_dict(obj)


@dataclass
class Entry:
    """One readable result record and where it was read from."""

    path: Path
    record: Record

    @property
    def created(self) -> dt.datetime:
        return self.record.created_at

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def preset(self) -> str:
        return self.record.preset

    @property
    def spec_hash(self) -> str:
        return self.record.spec_hash

    @property
    def bank_key(self) -> str:
        """What records must share to be ranked together: ``SPEC/PROTOCOL`` hashes."""
        return f"{self.spec_hash}/{self.record.protocol_hash}"

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def config_hash(self) -> str:
        return self.record.config_hash

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def order(self) -> tuple[dt.datetime, str]:
        """Sort key for "newest": creation time, then path (deterministic on ties)."""
        return self.created, str(self.path)


def read_records(roots: Iterable[Path | str]) -> tuple[list[Entry], list[tuple[Path, str]]]:
    """Every readable record under ``roots`` (directories, or single .json files), and the
    files (or roots) skipped with the reason. A file reached through two roots is read once."""
    records: list[Entry] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            skipped.append((root, "no such file or directory"))
            continue
        for path in record_files(root):
            real = path.resolve()
            if real in seen or not path.is_file():
                continue
            seen.add(real)
            try:
                records.append(Entry(path, load(path)))
            except RecordError as err:
                skipped.append((path, str(err)))
    return records, skipped


def load_records(path: Path | str) -> Any:
    """Every result record under ``path`` (a directory tree or one file) as a pandas DataFrame,
    one row per record, nested fields flattened to dotted columns (``metrics.lds.mean``,
    ``cost.fit.wall_s``, ``spec.model.d_model``, ...) plus ``path``, read by
    :func:`read_records`. JSON files that are not records are skipped; a record that cannot be
    read is skipped with a warning."""
    import pandas as pd

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    entries, skipped = read_records([root])
    for file, reason in skipped:
        if not reason.startswith("not a tdabench result"):
            warnings.warn(f"skipped {file}: {reason}", stacklevel=2)
    return pd.json_normalize([{**e.record.to_dict(), "path": str(e.path)} for e in entries])


# ----------------------------------------------------------------------------- writing

def user_results_dir() -> Path:
    """Where ``tdabench run`` and ``tune`` write by default: ``$TDABENCH_RESULTS``, else
    ``results`` under the cache (``$TDABENCH_CACHE``, default ``~/.cache/tdabench``): never the
    committed reference set in a checkout's ``results/``."""
    return Path(os.environ.get(RESULTS_ENV) or cache_dir() / "results")


def file_name(method: str, config_hash: str, spec_hash: str, seed: int,
              correlation: str = "spearman") -> str:
    """``<method>-<config hash>-<spec hash, 8>-s<seed>[-<correlation>].json``: records of
    other specs, configs, seeds and correlations sit side by side."""
    suffix = "" if correlation == "spearman" else f"-{correlation}"
    return f"{method}-{config_hash}-{spec_hash[:8]}-s{seed}{suffix}.json"


def check_writable(results_dir: Path | str) -> Path:
    """``results_dir`` if records can be written there; checked before any compute, creating
    nothing: the directory, or its nearest existing parent, must be a directory that takes a
    file (a probe file is written and removed). RecordWriteError names the problem and the fix."""
    path = Path(results_dir)
    if not str(results_dir).strip():
        raise RecordWriteError("the results directory is empty; pass a directory as --results-dir")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RecordWriteError(f"results directory {path}: {existing} is a file, not a directory; "
                               "choose another --results-dir")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tdabench-write-test-"):
            pass
    except OSError as err:
        raise RecordWriteError(f"results directory {path}: cannot write in {existing} "
                               f"({err.strerror or err}); choose another --results-dir") from None
    return path


def arrays_path(record_path: Path | str) -> Path:
    """Where a record's arrays (its test subsets' group scores and labels) lie: beside it, ``.npz``."""
    return Path(record_path).with_suffix(".npz")


def save(record: Record, path: Path, arrays: dict[str, Any] | None = None) -> Path:
    """Write ``record`` at ``path`` and ``arrays`` (e.g. its group scores) beside it as
    ``<path>.npz``, atomically. If that fails, both go to ``<cache>/unsaved-records/`` instead
    and RecordWriteError says where; nothing computed is lost, nothing half-written is left."""
    def write(target: Path) -> None:
        if arrays:
            atomic_write_npz(arrays_path(target), **arrays)
        atomic_write_json(target, record.to_dict())

    try:
        write(path)
        return path
    except OSError as err:
        if arrays:
            arrays_path(path).unlink(missing_ok=True)
        kept = cache_dir() / "unsaved-records" / path.name
        write(kept)
        raise RecordWriteError(f"could not write {path} ({err.strerror or err}); the record is "
                               f"kept at {kept}: copy it (and its .npz) into your results") from None


def host() -> Host:
    return Host(hostname=socket.gethostname() or None, platform=platform.platform(), cpus=os.cpu_count())


def code() -> Code:
    """The git commit of the tdabench source tree, if it is a git checkout (else empty)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return Code()
    return Code(commit, bool(git("status", "--porcelain", "--untracked-files=no")))


def method_info(method_cls: type) -> MethodInfo:
    """What rendering needs about a method, read from its class when the record is written."""
    config_cls = method_cls.Config
    defaults = json.loads(json.dumps(dataclasses.asdict(config_cls()), default=str))
    return MethodInfo(reference=method_cls.REFERENCE,
                      config_fields=[f.name for f in dataclasses.fields(config_cls)],
                      config_defaults=defaults, family=method_cls.FAMILY, version=method_cls.VERSION)


def method_version(rec: Record) -> int:
    """The adapter ``VERSION`` a record was made with (1 for records older than versions)."""
    return rec.method_info.version if rec.method_info else 1


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

