"""Loading facts from CSV, JSON or JSONL files, or from the rows of a UI table.

Every problem is raised as a FactsError whose message says where (file name or "table",
line/record/row) and what is wrong, so the UI and the CLI can show it as it is. No input raises
anything else, and the work is linear in the input: a file is at most MAX_BYTES (read no further),
holds at most MAX_FACTS facts, and its facts at most MAX_BYTES of text once templates are filled;
values nest at most MAX_DEPTH deep. The same limits hold for the rows of a table.
Pure stdlib on purpose: this runs before any model is loaded.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


def _limit_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"{name}={value!r}: must be a whole number of at least 1")
    return int(value)


MAX_BYTES = 5 * 1024 * 1024
MAX_FACTS = _limit_from_env("BEACON_MAX_FACTS", 2000)
MAX_DEPTH = 32  # how deep a fact's values may nest; CounterFact's records need 3
FORMATS = ("csv", "json", "jsonl")
FIELDS = ("id", "prompt", "target", "subject", "relation", "paraphrases", "aliases")
# Other names for the fields, from Q&A sheets and the CounterFact/EasyEdit datasets.
# A synonym only counts when the field's own name is absent; otherwise it stays metadata.
SYNONYMS = {"question": "prompt", "answer": "target", "target_new": "target",
            "paraphrase_prompts": "paraphrases", "rephrase_prompt": "paraphrases", "short_names": "aliases"}
CSV_COLUMNS = ["id", "subject", "relation", "prompt", "target", "paraphrases"]
# A cell starting with one of these is run as a formula by spreadsheets (CSV injection); written with a ' before it.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


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
    aliases: list[str] = field(default_factory=list)   # the subject's short forms people use (beacon/method/names.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fact":
        return cls(id=str(d["id"]), prompt=d["prompt"], target=d["target"], subject=d.get("subject"),
                   relation=d.get("relation"), paraphrases=list(d.get("paraphrases") or []),
                   meta=dict(d.get("meta") or {}), aliases=list(d.get("aliases") or []))


# ---------------------------------------------------------------- public entry points

def load_facts(path, max_bytes: int = MAX_BYTES, max_facts: int | None = None) -> list[Fact]:
    """Read a .csv, .json or .jsonl file of facts (format chosen by the extension).
    max_facts defaults to MAX_FACTS (env BEACON_MAX_FACTS)."""
    path = Path(path)
    source = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FactsError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise FactsError(f"{path}: cannot read the file ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FactsError(f"{path}: is a folder, not a file")
    # A device or a pipe reports 0 bytes and never ends (/dev/zero), or blocks on open (a FIFO).
    if not stat.S_ISREG(st.st_mode):
        raise FactsError(f"{path}: not a regular file (a device, pipe or socket)")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FactsError(f"{source}: unknown extension {path.suffix or '(none)'!r}; use .csv, .json or .jsonl")
    # Checked before reading, so a huge upload is refused without loading it into memory.
    if st.st_size > max_bytes:
        raise FactsError(f"{source}: the file is {_size(st.st_size)}, over the limit of {_size(max_bytes)}")
    try:
        # O_NONBLOCK: should the file be swapped for a pipe after the check, opening it does not wait.
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FactsError(f"{path}: not a regular file (a device, pipe or socket)")
            data = f.read(max_bytes + 1)  # never more: the size it reported may be wrong (/proc) or grow
    except OSError as e:
        raise FactsError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise FactsError(f"{source}: the file is over the limit of {_size(max_bytes)}")
    return parse_facts(data, fmt, source, max_bytes=max_bytes, max_facts=max_facts)


def parse_facts(data: bytes | str, fmt: str, source: str, max_bytes: int = MAX_BYTES,
                max_facts: int | None = None) -> list[Fact]:
    """Parse the contents of a fact file; `source` is the name used in error messages.
    max_bytes bounds the facts' text once templates are filled (the file's own size is load_facts's check)."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FactsError(f"{source}: unknown format {fmt!r}; use csv, json or jsonl")
    text = _decode(data, source) if isinstance(data, bytes) else data
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise FactsError(f"{source}: the file is empty")
    records = {"csv": _csv_records, "json": _json_records, "jsonl": _jsonl_records}[fmt](text, source)
    return _finish(records, source, max_bytes, max_facts, csv_meta=fmt == "csv")


def facts_from_rows(rows: list[dict], source: str = "table", max_bytes: int = MAX_BYTES,
                    max_facts: int | None = None, item: str = "row") -> list[Fact]:
    """Facts from the rows of a UI table (dicts of column -> cell); blank rows are skipped.
    The table holds at most max_facts facts and max_bytes of text, like a file. A problem names
    the row as `item` and its number from 1 ("row 3"; the API's records say "record 3")."""
    records = []
    for n, row in enumerate(rows, 1):
        if isinstance(row, dict):
            if all(_blank(v) for v in row.values()):
                continue
            row = _drop_blank_extras(row)
        records.append((f"{item} {n}", row))
    return _finish(records, source, max_bytes, max_facts)


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
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FactsError(f"{source}: the file is UTF-16; save it with UTF-8 encoding")
    data = data.removeprefix(codecs.BOM_UTF8)  # Excel writes one; it is not part of the first column's name
    try:
        return data.decode("utf-8")  # refuses surrogates too (ED A0 80...): they are not UTF-8
    except UnicodeDecodeError as e:
        raise FactsError(f"{source}, line {_line_of(data, e.start)}: not valid UTF-8 (byte 0x{data[e.start]:02x}); "
                         "save the file with UTF-8 encoding") from None


def _line_of(text: str | bytes, pos: int) -> int:
    """The line holding text[pos], counting \n, \r\n and a lone \r (old Mac files) as line ends."""
    nl, cr, crlf = ("\n", "\r", "\r\n") if isinstance(text, str) else (b"\n", b"\r", b"\r\n")
    return text.count(nl, 0, pos) + text.count(cr, 0, pos) - text.count(crlf, 0, pos) + 1


def _csv_records(text: str, source: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))  # newline="" so quoted cells may hold line breaks
    last = 0
    try:
        header = next(reader, None)
        while header is not None and not any(c.strip() for c in header):  # blank lines above the header
            header = next(reader, None)
        if header is None:
            raise FactsError(f"{source}: the file is empty (only blank cells, no header row)")
        header_line = last = reader.line_num
        names = [_unescape_formula(h).strip() for h in header]
        _check_columns(names, source, header_line)
        keys = [name or f"column {j}" for j, name in enumerate(names, 1)]
        twice = [k for k, count in Counter(keys).items() if count > 1]
        if twice:
            raise FactsError(f"{source}, line {header_line}: column {_shown(twice[0])} appears more than once; "
                             "give each column its own name")
        records = []
        for row in reader:
            # A quoted cell can span lines, so a record starts just after the previous one ended.
            start, last = last + 1, reader.line_num
            if not any(c.strip() for c in row):
                continue
            if any(c.strip() for c in row[len(names):]):
                raise FactsError(f"{source}, line {start}: {len(row)} cells but the header has {len(names)} columns "
                                 "(a comma inside a cell needs quotes around the cell)")
            rec = {key: _unescape_formula(cell) for key, cell in zip(keys, row)}
            records.append((f"line {start}", _drop_blank_extras(rec)))
    except csv.Error as e:
        # Named by where the record began: an unclosed quote is found only at the end of the file.
        raise FactsError(f"{source}, line {last + 1}: cannot parse CSV ({e})") from None
    return records


def _check_columns(names: list[str], source: str, line: int) -> None:
    found = {SYNONYMS.get(n.lower(), n.lower()) for n in names}
    missing = [f"{f} column (or {alt})" for f, alt in (("prompt", "question"), ("target", "answer"))
               if f not in found]
    if missing:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t"):
            hint = " (is the file separated by ';' or tabs instead of commas?)"
        shown = ", ".join(_shown(n) for n in names[:12]) + (f" and {len(names) - 12:,} more" if len(names) > 12 else "")
        raise FactsError(f"{source}, line {line}: no {' and no '.join(missing)}; found columns: {shown}{hint}")


def _json_records(text: str, source: str) -> list[tuple[str, object]]:
    data = _json_loads(text, source)
    # Accept a wrapper like {"facts": [...]}: one key holding the list.
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise FactsError(f"{source}, line 1: the top level must be a list of facts "
                         f'(or an object holding one list, like {{"facts": [...]}}), not {_kind(data)}')
    return [(f"record {n}", rec) for n, rec in enumerate(data, 1)]


def _jsonl_records(text: str, source: str) -> list[tuple[str, object]]:
    records = []
    # Not splitlines(): JSON strings may legally hold \u2028 and friends (but never a raw \r or \n).
    for n, line in enumerate(re.split(r"\r\n?|\n", text), 1):
        if line.strip():
            records.append((f"line {n}", _json_loads(line, source, first_line=n)))
    return records


def _json_loads(text: str, source: str, first_line: int = 1):
    def where(pos):
        line_start = max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1
        return f"{source}, line {first_line + _line_of(text, pos) - 1}, column {pos - line_start + 1}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FactsError(f"{where(e.pos)}: malformed JSON ({e.msg})") from None
    except (RecursionError, ValueError):  # nested past the stack, or a number past Python's digit limit
        pos, problem = _json_trouble(text)
        raise FactsError(f"{where(pos)}: {problem}") from None


_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]|[0-9]+')


def _json_trouble(text: str) -> tuple[int, str]:
    """Where json.loads gave up without saying: the first bracket nested past MAX_DEPTH (below
    the list and its wrapper), or the first number over Python's digit limit. Only called on
    text that is valid JSON up to that point, so the string pattern never backtracks far."""
    depth, digits = 0, sys.get_int_max_str_digits()
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH + 2:
                return m.start(), f"values nested more than {MAX_DEPTH} levels deep"
        elif tok in ("]", "}"):
            depth -= 1
        elif tok[0] != '"' and digits and len(tok) > digits:
            return m.start(), f"a number with more than {digits:,} digits"
    return 0, f"values nested more than {MAX_DEPTH} levels deep"


# ---------------------------------------------------------------- records -> facts

def _finish(records: list[tuple[str, object]], source: str, max_bytes: int = MAX_BYTES,
            max_facts: int | None = None, csv_meta: bool = False) -> list[Fact]:
    """Build the facts, check given ids are unique, then give the others content ids."""
    max_facts = MAX_FACTS if max_facts is None else max_facts
    if len(records) > max_facts:
        raise FactsError(f"{source}: {len(records):,} facts, over the limit of {max_facts:,} "
                         "(BEACON_MAX_FACTS sets the limit)")
    facts, taken, text = [], {}, 0
    for where, rec in records:
        def err(problem, where=where):
            return FactsError(f"{source}, {where}: {problem}")
        if not isinstance(rec, dict):
            raise err(f"a fact must be an object with a prompt and a target, not {_kind(rec)}")
        text += _check_values(rec, err)
        if text > max_bytes:
            raise err(f"the facts up to here hold more than {_size(max_bytes)} of text, the limit")
        fact, filled = _build(rec, err, max_bytes - text, csv_meta)
        text += filled
        if fact.id:
            if fact.id in taken:
                raise err(f"duplicate id {_shown(fact.id)}, already used on {taken[fact.id]}")
            taken[fact.id] = where
        facts.append(fact)
    if not facts:
        raise FactsError(f"{source}: no facts found (each needs a prompt and a target)")
    # After all given ids are known, so a generated id never takes one that a later fact names.
    next_suffix: dict[str, int] = {}
    for fact in facts:
        if not fact.id:
            fact.id = _content_id(fact, taken, next_suffix)
            taken[fact.id] = "generated"
    return facts


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_values(rec: dict, err) -> int:
    """The characters of text in a record's values. Refuses values nested past MAX_DEPTH (they
    would overflow the stack of whatever copies or saves them later) and lone surrogates, which
    JSON can spell (\\ud800) but no text encoding can write. Iterative, so depth costs no stack."""
    size, stack = 0, [(rec, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise err(f"values nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for k in value:
                if isinstance(k, str) and not k.isascii() and _SURROGATE.search(k):
                    raise err(f"a field name holds a lone surrogate ({_shown(k)}), which is not valid Unicode")
            value = value.values()
        for v in value:  # a dict's values or a list's items
            if isinstance(v, str):
                size += len(v)
                bad = not v.isascii() and _SURROGATE.search(v)
                if bad:
                    raise err(f"text holds a lone surrogate (\\u{ord(bad.group()):04x}), which is not valid Unicode")
            elif isinstance(v, (dict, list, tuple)):
                stack.append((v, depth + 1))
    return size


def _build(rec: dict, err, room: int, csv_meta: bool = False) -> tuple[Fact, int]:
    """The fact, and how much text filling its {} placeholders added (at most `room` characters)."""
    if isinstance(rec.get("requested_rewrite"), dict):
        rec = _unnest_counterfact(rec)
    known, meta = _split_fields(rec)
    if csv_meta:
        meta = {k: _cell_value(v) for k, v in meta.items()}
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
    aliases = _paraphrases(known.get("aliases"), err, "aliases")
    if aliases and not subject_given(known):
        raise err("aliases are short forms of the subject: give the subject too")

    # CounterFact/EasyEdit templates: "{} is the CEO of" + subject. The template itself is the
    # relation, so facts built from the same template group together as one relation.
    if not subject:
        if "{}" in prompt:
            raise err("the prompt has a {} placeholder but there is no subject to fill it")
        if any("{}" in p for p in paraphrases):
            raise err("a paraphrase has a {} placeholder but there is no subject to fill it")
    filled = 0
    if subject:
        # Counted before filling: 2 MB of "{}" times a 2 MB subject would be terabytes.
        filled = sum(t.count("{}") for t in (prompt, *paraphrases)) * (len(subject) - 2)
        if filled > room:
            raise err(f"filling the {{}} placeholders with the subject would add {filled:,} characters, "
                      f"more than the {max(room, 0):,} left under the limit on text")
        if "{}" in prompt:
            relation = relation or prompt
            prompt = prompt.replace("{}", subject).strip()
        paraphrases = [p.replace("{}", subject) for p in paraphrases]

    fact = Fact(id=_text(known, "id", err) or "", prompt=prompt, target=target, subject=subject,
                relation=relation, paraphrases=paraphrases, meta=meta, aliases=aliases)
    return fact, filled


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
    try:
        return str(value).strip()
    except ValueError:  # an int past Python's digit limit (a table can hold one)
        raise err(f"{name} is a number with more than {sys.get_int_max_str_digits():,} digits") from None


def subject_given(known: dict) -> bool:
    return not _blank(known.get("subject"))


def _paraphrases(value, err, name: str = "paraphrases") -> list[str]:
    if _blank(value):
        return []
    items = value.split("|") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise err(f"{name} must be a list of text, or text with '|' between {name}")
    return [p.strip() for p in items if p.strip()]


def _content_id(fact: Fact, taken, next_suffix: dict[str, int]) -> str:
    """From content, so the same fact gets the same id every time the file is loaded: the hash, or
    for a repeat the hash with the first free -2, -3... next_suffix remembers where the search for
    each hash got to, so n identical facts cost n steps, not n^2/2 (taken only grows)."""
    base = "f" + hashlib.sha1(f"{fact.prompt}\x1f{fact.target}".encode()).hexdigest()[:8]
    if base not in taken:
        return base
    n = next_suffix.get(base, 2)
    while f"{base}-{n}" in taken:
        n += 1
    next_suffix[base] = n + 1
    return f"{base}-{n}"


# ---------------------------------------------------------------- writing

def _flat_record(fact: Fact) -> dict:
    """A fact as one flat record, metadata alongside the fields, as it would be written by hand."""
    rec = {"id": fact.id}
    if fact.subject is not None:
        rec["subject"] = fact.subject
    if fact.relation is not None:
        rec["relation"] = fact.relation
    rec.update(prompt=fact.prompt, target=fact.target, paraphrases=list(fact.paraphrases))
    if fact.aliases:
        rec["aliases"] = list(fact.aliases)
    for key, value in fact.meta.items():
        rec.setdefault(key, value)
    return rec


def _csv_text(records: list[dict], name: str) -> str:
    columns = list(dict.fromkeys([*CSV_COLUMNS, *(k for rec in records for k in rec)]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # csv quotes a cell holding \n but not one holding a lone \r, which the reader then takes as a line end.
    quote_all = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    header = [_escape_formula(c) for c in columns]
    (quote_all if any("\r" in c for c in header) else writer).writerow(header)
    for rec in records:
        if any("|" in p for p in rec["paraphrases"]):
            raise FactsError(f"{name}: fact {rec['id']!r} has a paraphrase containing '|', which CSV uses "
                             "to separate paraphrases; save as .json instead")
        if any("|" in a for a in rec.get("aliases", ())):
            raise FactsError(f"{name}: fact {rec['id']!r} has an alias containing '|', which CSV uses "
                             "to separate aliases; save as .json instead")
        cells = []
        for col in columns:
            if col in ("paraphrases", "aliases"):
                value = "|".join(rec.get(col, ()))
            elif col in CSV_COLUMNS:
                value = rec.get(col) or ""
            else:  # metadata: absent is an empty cell; any value, even "" or None, is written so it reads back
                value = _meta_cell(rec[col]) if col in rec else ""
            cells.append(_escape_formula(value))
        (quote_all if any("\r" in c for c in cells) else writer).writerow(cells)
    return out.getvalue()


_JSON_WORDS = ("true", "false", "null", "NaN", "Infinity")


def _cell_value(cell):
    """A metadata cell of a CSV holds its value as JSON when it is JSON written the way save_facts
    writes it (42, 0.5, [1, 2], {"a": 1}, true, null, "42"); any other cell is text as it stands,
    so a hand-written 1.10 or 007 stays text."""
    if not isinstance(cell, str) or not cell or (cell[0] not in '-0123456789[{"' and cell not in _JSON_WORDS):
        return cell
    try:
        value = json.loads(cell)
        _check_values({"": value}, FactsError)  # not too deep, no lone surrogates
    except (ValueError, RecursionError):  # FactsError is a ValueError
        return cell
    return value if json.dumps(value, ensure_ascii=False) == cell else cell


def _meta_cell(value) -> str:
    """The cell _cell_value reads back as `value`."""
    if isinstance(value, str) and not _blank(value) and _cell_value(value) is value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _escape_formula(cell: str) -> str:
    """' before a cell a spreadsheet would run as a formula, as spreadsheets write it themselves; also
    before one that already starts with quotes and then such a character, so reading takes off exactly one."""
    return "'" + cell if cell.lstrip("'").startswith(FORMULA_START) else cell


def _unescape_formula(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_START) else cell


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


def _shown(value, width: int = 60) -> str:
    """repr of a name or id for a message, cut short: a message must not repeat a 1 MB cell."""
    r = repr(value)
    return r if len(r) <= width else r[:width - 4] + "...'"
