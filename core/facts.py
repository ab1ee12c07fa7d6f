"""Loading facts from CSV, JSON or JSONL files, or from the rows of a UI table.

Every problem is raised as a FactsError whose message says where (file name or "table",
line/record/row) and what is wrong, so the UI and the CLI can show it as it is.
Pure stdlib on purpose: this runs before any model is loaded.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_BYTES = 5 * 1024 * 1024
FORMATS = ("csv", "json", "jsonl")
FIELDS = ("id", "prompt", "target", "subject", "relation", "paraphrases")
# Other names for the fields, from Q&A sheets and the CounterFact/EasyEdit datasets.
# A synonym only counts when the field's own name is absent; otherwise it stays metadata.
SYNONYMS = {"question": "prompt", "answer": "target", "target_new": "target",
            "paraphrase_prompts": "paraphrases", "rephrase_prompt": "paraphrases"}
CSV_COLUMNS = ["id", "subject", "relation", "prompt", "target", "paraphrases"]


class FactsError(ValueError):
    """A fact file or table that cannot be used; the message names the source, the place and the problem."""


@dataclass
class Fact:
    id: str
    prompt: str
    target: str
    subject: str | None = None
    relation: str | None = None
    paraphrases: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # unknown fields, kept so nothing the user wrote is lost

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fact":
        return cls(id=str(d["id"]), prompt=d["prompt"], target=d["target"], subject=d.get("subject"),
                   relation=d.get("relation"), paraphrases=list(d.get("paraphrases") or []),
                   meta=dict(d.get("meta") or {}))


# ---------------------------------------------------------------- public entry points

def load_facts(path, max_bytes: int = MAX_BYTES) -> list[Fact]:
    """Read a .csv, .json or .jsonl file of facts (format chosen by the extension)."""
    path = Path(path)
    source = path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FactsError(f"{path}: file not found") from None
    except OSError as e:
        raise FactsError(f"{path}: cannot read the file ({e.strerror})") from None
    if path.is_dir():
        raise FactsError(f"{path}: is a folder, not a file")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FactsError(f"{source}: unknown extension {path.suffix or '(none)'!r}; use .csv, .json or .jsonl")
    # Checked before reading, so a huge upload is refused without loading it into memory.
    if size > max_bytes:
        raise FactsError(f"{source}: the file is {_size(size)}, over the limit of {_size(max_bytes)}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FactsError(f"{path}: cannot read the file ({e.strerror})") from None
    return parse_facts(data, fmt, source)


def parse_facts(data: bytes | str, fmt: str, source: str) -> list[Fact]:
    """Parse the contents of a fact file; `source` is the name used in error messages."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FactsError(f"{source}: unknown format {fmt!r}; use csv, json or jsonl")
    text = _decode(data, source) if isinstance(data, bytes) else data.removeprefix("\ufeff")
    if not text.strip():
        raise FactsError(f"{source}: the file is empty")
    records = {"csv": _csv_records, "json": _json_records, "jsonl": _jsonl_records}[fmt](text, source)
    return _finish(records, source)


def facts_from_rows(rows: list[dict], source: str = "table") -> list[Fact]:
    """Facts from the rows of a UI table (dicts of column -> cell); blank rows are skipped."""
    records = []
    for n, row in enumerate(rows, 1):
        if isinstance(row, dict):
            if all(_blank(v) for v in row.values()):
                continue
            row = _drop_blank_extras(row)
        records.append((f"row {n}", row))
    return _finish(records, source)


def save_facts(facts: list[Fact], path) -> None:
    """Write facts as .csv, .json or .jsonl (by extension) in a form load_facts reads back."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    records = [_flat_record(f) for f in facts]
    if fmt == "json":
        text = json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    elif fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif fmt == "csv":
        text = _csv_text(records, path.name)
    else:
        raise FactsError(f"{path.name}: unknown extension {path.suffix or '(none)'!r}; use .csv, .json or .jsonl")
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- reading the formats

def _decode(data: bytes, source: str) -> str:
    data = data.removeprefix(codecs.BOM_UTF8)  # Excel writes one; it is not part of the first column's name
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FactsError(f"{source}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
                         "save the file with UTF-8 encoding") from None


def _csv_records(text: str, source: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="" so quoted cells may hold line breaks
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):  # blank lines above the header
            header = next(reader, None)
        if header is None:
            raise FactsError(f"{source}: the file is empty (only blank cells, no header row)")
        header_line = reader.line_num
        names = [h.strip() for h in header]
        _check_columns(names, source, header_line)
        records, last = [], reader.line_num
        for row in reader:
            # A quoted cell can span lines, so a record starts just after the previous one ended.
            start, last = last + 1, reader.line_num
            if not any(c.strip() for c in row):
                continue
            if any(c.strip() for c in row[len(names):]):
                raise FactsError(f"{source}, line {start}: {len(row)} cells but the header has {len(names)} columns "
                                 "(a comma inside a cell needs quotes around the cell)")
            rec = {name or f"column {j}": cell for j, (name, cell) in enumerate(zip(names, row), 1)}
            records.append((f"line {start}", _drop_blank_extras(rec)))
    except csv.Error as e:
        raise FactsError(f"{source}, line {reader.line_num}: cannot parse CSV ({e})") from None
    return records


def _check_columns(names: list[str], source: str, line: int) -> None:
    found = {SYNONYMS.get(n.lower(), n.lower()) for n in names}
    missing = [f"{f} column (or {alt})" for f, alt in (("prompt", "question"), ("target", "answer"))
               if f not in found]
    if missing:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t"):
            hint = " (is the file separated by ';' or tabs instead of commas?)"
        raise FactsError(f"{source}, line {line}: no {' and no '.join(missing)}; "
                         f"found columns: {', '.join(repr(n) for n in names)}{hint}")


def _json_records(text: str, source: str) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FactsError(f"{source}, line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None
    # Accept a wrapper like {"facts": [...]}: one key holding the list.
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise FactsError(f"{source}, line 1: the top level must be a list of facts "
                         f'(or an object holding one list, like {{"facts": [...]}}), not {_kind(data)}')
    return [(f"record {n}", rec) for n, rec in enumerate(data, 1)]


def _jsonl_records(text: str, source: str) -> list[tuple[str, object]]:
    records = []
    # split("\n") rather than splitlines(): JSON strings may legally hold \u2028 and friends.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise FactsError(f"{source}, line {n}, column {e.colno}: malformed JSON ({e.msg})") from None
    return records


# ---------------------------------------------------------------- records -> facts

def _finish(records: list[tuple[str, object]], source: str) -> list[Fact]:
    """Build the facts, check given ids are unique, then give the others content ids."""
    facts, taken = [], {}
    for where, rec in records:
        def err(problem, where=where):
            return FactsError(f"{source}, {where}: {problem}")
        if not isinstance(rec, dict):
            raise err(f"a fact must be an object with a prompt and a target, not {_kind(rec)}")
        fact = _build(rec, err)
        if fact.id:
            if fact.id in taken:
                raise err(f"duplicate id {fact.id!r}, already used on {taken[fact.id]}")
            taken[fact.id] = where
        facts.append(fact)
    if not facts:
        raise FactsError(f"{source}: no facts found (each needs a prompt and a target)")
    # After all given ids are known, so a generated id never takes one that a later fact names.
    for fact in facts:
        if not fact.id:
            fact.id = _content_id(fact, taken)
            taken[fact.id] = "generated"
    return facts


def _build(rec: dict, err) -> Fact:
    if isinstance(rec.get("requested_rewrite"), dict):
        rec = _unnest_counterfact(rec)
    known, meta = _split_fields(rec)
    prompt = _text(known, "prompt", err)
    target = _text(known, "target", err)
    if prompt is None:
        raise err("missing prompt")
    if not prompt:
        raise err("empty prompt")
    if not target:  # absent or blank are the same mistake for the user
        raise err("missing target")
    subject = _text(known, "subject", err) or None
    relation = _text(known, "relation", err) or None
    paraphrases = _paraphrases(known.get("paraphrases"), err)

    # CounterFact/EasyEdit templates: "{} is the CEO of" + subject. The template itself is the
    # relation, so facts built from the same template group together as one relation.
    if not subject:
        if "{}" in prompt:
            raise err("the prompt has a {} placeholder but there is no subject to fill it")
        if any("{}" in p for p in paraphrases):
            raise err("a paraphrase has a {} placeholder but there is no subject to fill it")
    elif "{}" in prompt:
        relation = relation or prompt
        prompt = prompt.replace("{}", subject).strip()
    if subject:
        paraphrases = [p.replace("{}", subject) for p in paraphrases]

    return Fact(id=_text(known, "id", err) or "", prompt=prompt, target=target, subject=subject,
                relation=relation, paraphrases=paraphrases, meta=meta)


def _unnest_counterfact(rec: dict) -> dict:
    """CounterFact's {"case_id", "requested_rewrite": {prompt, subject, target_new: {"str"}}, "paraphrase_prompts"}
    flattened into one record; its other keys (target_true, relation_id, neighborhood_prompts...) become metadata."""
    flat = {k: v for k, v in rec.items() if k != "requested_rewrite"}
    flat.update(rec["requested_rewrite"])
    if "id" not in flat and "case_id" in flat:
        flat["id"] = flat.pop("case_id")
    return flat


def _split_fields(rec: dict) -> tuple[dict, dict]:
    """Known fields (names case-insensitive, whitespace-stripped, synonyms mapped) and the rest as metadata."""
    known, meta = {}, {}
    for key, value in rec.items():
        name = str(key).strip()
        if name.lower() in FIELDS and name.lower() not in known:
            known[name.lower()] = value
        else:
            meta[name] = value
    for name in list(meta):
        target_field = SYNONYMS.get(name.lower())
        if target_field and target_field not in known:
            known[target_field] = meta.pop(name)
    return known, meta


def _text(known: dict, name: str, err) -> str | None:
    """The field as stripped text; None when absent, "" when blank."""
    if name not in known:
        return None
    value = known[name]
    if isinstance(value, dict) and "str" in value:  # CounterFact's {"str": "English", "id": "Q1860"}
        value = value["str"]
    if _blank(value):
        return ""
    if isinstance(value, float) and value.is_integer():  # a year typed into a table comes back as 1987.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise err(f"{name} must be text, not {_kind(value)}")
    return str(value).strip()


def _paraphrases(value, err) -> list[str]:
    if _blank(value):
        return []
    items = value.split("|") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise err("paraphrases must be a list of text, or text with '|' between paraphrases")
    return [p.strip() for p in items if p.strip()]


def _content_id(fact: Fact, taken) -> str:
    # From content, so the same fact gets the same id every time the file is loaded.
    base = "f" + hashlib.sha1(f"{fact.prompt}\x1f{fact.target}".encode()).hexdigest()[:8]
    new_id, n = base, 2
    while new_id in taken:
        new_id, n = f"{base}-{n}", n + 1
    return new_id


# ---------------------------------------------------------------- writing

def _flat_record(fact: Fact) -> dict:
    """A fact as one flat record, metadata alongside the fields, as it would be written by hand."""
    rec = {"id": fact.id}
    if fact.subject is not None:
        rec["subject"] = fact.subject
    if fact.relation is not None:
        rec["relation"] = fact.relation
    rec.update(prompt=fact.prompt, target=fact.target, paraphrases=list(fact.paraphrases))
    for key, value in fact.meta.items():
        rec.setdefault(key, value)
    return rec


def _csv_text(records: list[dict], name: str) -> str:
    columns = list(CSV_COLUMNS)
    for rec in records:
        columns += [k for k in rec if k not in columns]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        if any("|" in p for p in rec["paraphrases"]):
            raise FactsError(f"{name}: fact {rec['id']!r} has a paraphrase containing '|', which CSV uses "
                             "to separate paraphrases; save as .json instead")
        cells = []
        for col in columns:
            value = rec.get(col)
            if col == "paraphrases":
                value = "|".join(value)
            elif value is not None and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False)  # metadata from JSON: keep it readable and parseable
            cells.append("" if value is None else value)
        writer.writerow(cells)
    return out.getvalue()


# ---------------------------------------------------------------- small helpers

def _blank(value) -> bool:
    # NaN is how a pandas-backed UI table reports an empty cell.
    return (value is None or (isinstance(value, str) and not value.strip())
            or (isinstance(value, float) and value != value))


def _drop_blank_extras(rec: dict) -> dict:
    """In tables every row has every column; an empty cell of an unknown column is not metadata."""
    def is_field(k):
        return str(k).strip().lower() in FIELDS or str(k).strip().lower() in SYNONYMS
    return {k: v for k, v in rec.items() if is_field(k) or not _blank(v)}


def _kind(value) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"
