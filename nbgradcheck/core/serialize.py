"""A gradient check result as JSON, and back: the one place of the file format.

Schema ``"nbgradcheck.result"``, version 2. Stable: later versions of nbgradcheck may add
fields (readers ignore fields they do not know); none is renamed or removed without
raising ``schema_version``::

    {
      "schema": "nbgradcheck.result", "schema_version": 2, "nbgradcheck_version": "0.1.0",
      "passed": false, "verdict": "wrong", "difference": 0.101, "floor": 3.1e-08,
      "method": "central", "eps": 1e-06,          # or "auto"
      "mode": "full", "tol": 1e-05, "complete": true,
      "n_evaluations": 96, "n_checked": 47, "n_parameters": 47,
      "loss_value": 0.69, "duration_s": 0.01, "failing": ["b1", "W2"],
      "summary": "Gradient check FAILED: ...",    # result.summary(), several lines
      "notes": ["..."],
      "tensors": [
        {"name": "W1", "dtype": "float64", "passed": true, "tol": 1e-05,
         "shape": [5, 4], "size": 20, "checked": 20, "difference": 1.5e-09,
         "max_abs_error": 1.8e-10, "worst_index": [3, 3], "kinks": 0, "floor": 3e-08,
         "verdict": "correct", "diagnosis": "",   # + every further field of the table's row
         "refined": 0, "repeatable": null,        # elements re-estimated; false: random loss
         "elements": {                     # one entry per checked element; absent when
           "flat_index": [0, 1, ...],      # exported with elements=False
           "value": [...], "analytic": [...], "numeric": [...], "step": [...],
           "noise": [...], "kink": [false, ...]},
         "directional": {                  # fast mode only: the whole-tensor tests
           "status": "passed", "group_tests": 0, "evaluations": 32, "sampled": [...],
           "tests": {"size": [...], "numeric": [...], "analytic": [...], "original": [...],
                     "spread": [...], "noise": [...], "theta": [...], "tol": [...],
                     "level": [...], "trigger": [...], "left": [...], "right": [...]}}}
      ]
    }

NaN and ±inf are written as ``null`` (so the output is strict JSON), tuples as lists;
``flat_index`` is the C-order index (``np.unravel_index(flat_index, shape)``). The
summary fields are the result's own; a result rebuilt by :func:`from_dict` recomputes
them from the measurements (the elements, and in fast mode the directional tests). Files
written by nbgradcheck 0.1.0 between the move to ``core/`` and this module carry the
schema name ``"nbgradcheck.core.result"``: the same format, read as well. Version 1 also
listed each element's ``loss_plus`` and ``loss_minus`` (J at θ±ε); version 2 dropped them
(a result no longer keeps two loss values per element), and reads version 1 files.

:func:`from_dict` validates its input against this format: a missing key, a wrong type,
a list of the wrong length, an index outside the shape raises :class:`ResultFormatError`
naming the field. Every array comes from the file's own lists, so loading allocates in
proportion to the file, whatever shape it declares.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from nbgradcheck.core.directional import DirectionalTest, DirectionalTests
from nbgradcheck.core.result import CheckResult, TensorCheck
from nbgradcheck.errors import GradCheckError

SCHEMA = "nbgradcheck.result"
READABLE_SCHEMAS = (SCHEMA, "nbgradcheck.core.result")
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Per-element JSON keys and the TensorCheck arrays they hold.
ELEMENT_FIELDS = {
    "value": "values",
    "analytic": "analytic",
    "numeric": "numeric",
    "step": "step",
    "noise": "noise",
}
# Columns of a directional test record: name -> kind ("number", "int", "bool").
TEST_COLUMNS = {
    "size": "int",
    "numeric": "number",
    "analytic": "number",
    "original": "number",
    "spread": "number",
    "noise": "number",
    "theta": "number",
    "tol": "number",
    "level": "int",
    "trigger": "bool",
    "left": "number",
    "right": "number",
}
MAX_ELEMENTS = 2**62  # a shape must describe an array NumPy can index


class ResultFormatError(GradCheckError):
    """The data is not an nbgradcheck result in the saved format; names the bad field."""


# -- writing ------------------------------------------------------------------------------------


def package_version() -> str:
    """The installed nbgradcheck's version ('unknown' when run from an uninstalled tree)."""
    try:
        return metadata.version("nbgradcheck")
    except metadata.PackageNotFoundError:
        return "unknown"


def to_dict(result: CheckResult, elements: bool = True) -> dict[str, Any]:
    """``result`` as JSON-safe builtins in the versioned schema of this module.

    ``elements=False`` leaves out the per-element arrays (a summary, which cannot be read
    back as a result).
    """
    summary = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "nbgradcheck_version": package_version(),
        "passed": result.passed,
        "verdict": result.verdict,
        "difference": result.difference,
        "floor": result.floor,
        "method": result.method,
        "eps": result.eps,
        "mode": result.mode,
        "tol": result.tol,
        "complete": result.complete,
        "n_evaluations": result.n_evaluations,
        "n_checked": result.n_checked,
        "n_parameters": result.n_parameters,
        "loss_value": result.loss_value,
        "duration_s": result.duration_s,
        "failing": result.failing,
        "summary": result.summary(),
        "notes": list(result.notes),
        "tensors": [tensor_dict(t, elements) for t in result.tensors],
    }
    return json_safe(summary)


def to_json(result: CheckResult, elements: bool = True, indent: int | None = None) -> str:
    """:func:`to_dict` as strict JSON text."""
    return json.dumps(to_dict(result, elements), indent=indent, allow_nan=False)


def tensor_dict(tensor: TensorCheck, elements: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": tensor.name,
        "dtype": str(np.dtype(tensor.dtype)),
        "passed": tensor.passed,
        "tol": tensor.tol,
    }
    entry.update(tensor.summary_row())
    entry.update(refined=tensor.refined, repeatable=tensor.repeatable)
    if elements:
        entry["elements"] = {
            "flat_index": tensor.indices,
            **{key: getattr(tensor, attribute) for key, attribute in ELEMENT_FIELDS.items()},
            "kink": tensor.kink,
        }
        if tensor.directional is not None:
            entry["directional"] = directional_dict(tensor.directional)
    return entry


def directional_dict(record: DirectionalTests) -> dict[str, Any]:
    return {
        "status": record.status,
        "group_tests": record.group_tests,
        "evaluations": record.evaluations,
        "sampled": np.asarray(record.sampled),
        "tests": {
            column: [getattr(test, column) for test in record.tests] for column in TEST_COLUMNS
        },
    }


def json_safe(value: Any) -> Any:
    """Builtins only: NaN/inf → None, tuples and arrays → lists, NumPy scalars → Python."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [x if math.isfinite(x) else None for x in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- reading ------------------------------------------------------------------------------------


def from_json(text: str | bytes) -> CheckResult:
    """Rebuild a result from :func:`to_json` text (validated, see :func:`from_dict`)."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as error:
        raise ResultFormatError(f"not an nbgradcheck result: not JSON text ({error})") from None
    return from_dict(data)


def from_dict(data: Any) -> CheckResult:
    """Rebuild a result saved with :func:`to_dict` (with its elements), validated.

    The numbers come from the file; verdicts and diagnoses are recomputed from them. The
    analytic gradient is known only at the checked elements.
    """
    validate_schema(data)
    tol = number(data, "tol", "", positive=True)
    tensors = as_list(need(data, "tensors", ""), "tensors")
    mode = text(data, "mode", "")
    eps = need(data, "eps", "")
    if not (eps == "auto" or is_number(eps)):
        fail("eps", f"expected a number or 'auto', got {describe(eps)}")
    return CheckResult(
        [tensor_from_dict(entry, f"tensors[{i}]", tol, mode) for i, entry in enumerate(tensors)],
        text(data, "method", ""),
        "auto" if eps == "auto" else float(eps),
        mode,
        tol,
        integer(data, "n_evaluations", ""),
        number(data, "loss_value", "", nullable=True),
        complete=boolean(data, "complete", ""),
        notes=[
            as_text(note, f"notes[{i}]")
            for i, note in enumerate(as_list(need(data, "notes", ""), "notes"))
        ],
        duration_s=number(data, "duration_s", "", nullable=True, default=0.0),
    )


def validate_schema(data: Any) -> None:
    if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
        raise ResultFormatError(f"not an nbgradcheck result: expected 'schema': {SCHEMA!r}")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ResultFormatError(
            f"result schema version {version!r} is not supported by this nbgradcheck "
            f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    tensors = data.get("tensors")
    if isinstance(tensors, list):
        missing = [t.get("name") for t in tensors if isinstance(t, dict) and "elements" not in t]
        if missing:
            raise ResultFormatError(
                f"tensors {missing} were saved without elements (to_dict(elements=False)); "
                f"only a summary can be read from them"
            )


def tensor_from_dict(entry: Any, path: str, tol: float, mode: str) -> TensorCheck:
    entry = as_dict(entry, path)
    shape = tuple(
        as_int(n, f"{path}.shape[{i}]")
        for i, n in enumerate(as_list(need(entry, "shape", path), f"{path}.shape"))
    )
    size = math.prod(shape)
    if size > MAX_ELEMENTS:
        fail(f"{path}.shape", f"{list(shape)} describes more elements than an array can hold")
    if "size" in entry and entry["size"] != size:
        fail(f"{path}.size", f"{entry['size']!r} does not agree with the shape {list(shape)}")
    elements = as_dict(need(entry, "elements", path), f"{path}.elements")
    indices = index_list(
        need(elements, "flat_index", f"{path}.elements"), f"{path}.elements.flat_index", size
    )
    count = indices.size
    if mode == "full" and count != size:
        fail(
            f"{path}.elements.flat_index",
            f"lists {count} elements, but a full check of shape {list(shape)} lists all {size}",
        )
    arrays = {
        attribute: number_list(
            need(elements, key, f"{path}.elements"), f"{path}.elements.{key}", count
        )
        for key, attribute in ELEMENT_FIELDS.items()
    }
    kink = bool_list(need(elements, "kink", f"{path}.elements"), f"{path}.elements.kink", count)
    repeatable = entry.get("repeatable")
    if repeatable is not None and not isinstance(repeatable, bool):
        fail(f"{path}.repeatable", f"expected true, false or null, got {describe(repeatable)}")
    return TensorCheck(
        name=text(entry, "name", path),
        shape=shape,
        dtype=float_dtype(need(entry, "dtype", path), f"{path}.dtype"),
        checked_indices=indices,
        kink=kink,
        analytic_full=None,
        tol=number(entry, "tol", path, positive=True, default=tol),
        refined=integer(entry, "refined", path, default=0),
        directional=directional_from_dict(entry.get("directional"), f"{path}.directional", size),
        repeatable=repeatable,
        steps=arrays.pop("step"),
        round_off=arrays.pop("noise"),
        **arrays,
    )


def directional_from_dict(entry: Any, path: str, size: int) -> DirectionalTests | None:
    if entry is None:
        return None
    entry = as_dict(entry, path)
    columns = as_dict(need(entry, "tests", path), f"{path}.tests")
    count = len(as_list(need(columns, "numeric", f"{path}.tests"), f"{path}.tests.numeric"))
    readers: dict[str, Callable[[Any, str, int], np.ndarray]] = {
        "number": number_list,
        "int": int_list,
        "bool": bool_list,
    }
    values = {
        column: readers[kind](
            need(columns, column, f"{path}.tests"), f"{path}.tests.{column}", count
        )
        for column, kind in TEST_COLUMNS.items()
    }
    tests = [
        DirectionalTest(**{column: values[column][i].item() for column in TEST_COLUMNS})
        for i in range(count)
    ]
    return DirectionalTests(
        tests=tests,
        status=text(entry, "status", path),
        group_tests=integer(entry, "group_tests", path, default=0),
        evaluations=integer(entry, "evaluations", path, default=0),
        sampled=index_list(entry.get("sampled", []), f"{path}.sampled", size, distinct=False),
    )


# -- checking each field -------------------------------------------------------------------------


def fail(path: str, message: str) -> None:
    raise ResultFormatError(f"invalid nbgradcheck result: {path or 'the top level'}: {message}")


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def need(mapping: dict[str, Any], key: str, path: str) -> Any:
    if key not in mapping:
        fail(f"{path}.{key}" if path else key, "missing")
    return mapping[key]


def as_dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {describe(value)}")
    return value


def as_list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        fail(path, f"expected a list, got {describe(value)}")
    return value


def as_text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a string, got {describe(value)}")
    return value


def as_int(value: Any, path: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        fail(path, f"expected an integer ≥ {minimum}, got {describe(value)}")
    return value


def field_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def text(mapping: dict[str, Any], key: str, path: str) -> str:
    return as_text(need(mapping, key, path), field_path(path, key))


def integer(mapping: dict[str, Any], key: str, path: str, default: int | None = None) -> int:
    if default is not None and key not in mapping:
        return default
    return as_int(need(mapping, key, path), field_path(path, key))


def boolean(mapping: dict[str, Any], key: str, path: str) -> bool:
    value = need(mapping, key, path)
    if not isinstance(value, bool):
        fail(field_path(path, key), f"expected true or false, got {describe(value)}")
    return value


def number(
    mapping: dict[str, Any],
    key: str,
    path: str,
    nullable: bool = False,
    positive: bool = False,
    default: float | None = None,
) -> float:
    if default is not None and mapping.get(key) is None:
        return default
    value = need(mapping, key, path)
    if value is None and nullable:
        return math.nan
    if not is_number(value) or (positive and not value > 0):
        kind = "a positive number" if positive else "a number"
        fail(field_path(path, key), f"expected {kind}, got {describe(value)}")
    return float(value)


def float_dtype(value: Any, path: str) -> np.dtype:
    try:
        dtype = np.dtype(as_text(value, path))
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "f":
        fail(path, f"expected a floating dtype name such as 'float64', got {describe(value)}")
    return dtype


def number_list(value: Any, path: str, length: int) -> np.ndarray:
    """Numbers (null: NaN), ``length`` of them."""
    values = sized_list(value, path, length)
    if not all(v is None or is_number(v) for v in values):
        bad = next(i for i, v in enumerate(values) if not (v is None or is_number(v)))
        fail(f"{path}[{bad}]", f"expected a number or null, got {describe(values[bad])}")
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def int_list(value: Any, path: str, length: int) -> np.ndarray:
    values = sized_list(value, path, length)
    for i, v in enumerate(values):
        as_int(v, f"{path}[{i}]")
    return np.array(values, dtype=np.int64)


def bool_list(value: Any, path: str, length: int) -> np.ndarray:
    values = sized_list(value, path, length)
    if not all(isinstance(v, bool) for v in values):
        bad = next(i for i, v in enumerate(values) if not isinstance(v, bool))
        fail(f"{path}[{bad}]", f"expected true or false, got {describe(values[bad])}")
    return np.array(values, dtype=bool)


def sized_list(value: Any, path: str, length: int) -> list:
    values = as_list(value, path)
    if len(values) != length:
        fail(path, f"expected {length} values (one per checked element), got {len(values)}")
    return values


def index_list(value: Any, path: str, size: int, distinct: bool = True) -> np.ndarray:
    """Flat indices into a tensor of ``size`` elements (``distinct``: each at most once)."""
    values = as_list(value, path)
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < size:
            fail(f"{path}[{i}]", f"expected a flat index from 0 to {size - 1}, got {describe(v)}")
    indices = np.array(values, dtype=np.int64)
    if distinct and np.unique(indices).size != indices.size:
        fail(path, "expected each flat index at most once")
    return indices
