"""The Power BI project (powerbi/RetailInventory.pbip) checked without Windows or Power BI Desktop.

* Every PBIR JSON file, definition.pbir / definition.pbism and every ``.platform`` file validates against the
  Microsoft schema its ``$schema`` names, read from the offline copy in ``../shared/schemas/microsoft-fabric``
  (``https://developer.microsoft.com/json-schemas/fabric/`` mapped to that folder; see its SOURCE.md).
* The TMDL semantic model, read by a small parser below (tables, columns, measures, partitions,
  relationships, roles, parameters), is consistent: every field a report visual binds exists in it, every
  relationship joins existing columns of the same type from a fact to a dimension, once per pair, single
  direction, the date table is marked, every DAX expression (measures, RLS filter) parses with
  ``pbi-parsers`` and names only existing columns and measures, every M expression parses too.
* Against the real engine (the ClickHouse HTTP endpoint over chDB, ``python -m chserver`` under the
  supervisor, migrations applied), as the read-only ``bi_reader`` the ODBC connection uses: every table's
  source query (the SQL inside its ``Odbc.Query``) runs and returns exactly the declared columns with
  compatible types; the model's "one" sides are unique; ``bi_reader`` cannot write.
* Every DAX measure has a ClickHouse SQL twin (``TWINS``), and both agree on a small known dataset loaded
  through the real tables: the DAX is *evaluated* by a small interpreter of the DAX subset the model uses
  (filter context through the model's relationships, CALCULATE with column filters and time intelligence,
  iterators, BLANK arithmetic) over the rows the model's partitions load, in three filter contexts
  (whole model; one store and one week; the Store Manager role of one user).

pbi-parsers 0.9.5 parses chains of ``+``/``-`` (and ``*``/``/``) right-associatively (``1 - 2 + 3`` as
``1 - (2 + 3)``); the interpreter refuses such unparenthesised chains instead of evaluating them wrongly,
and no measure of the model has one (see powerbi/README.md).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import REPO

PBI = REPO / "powerbi"
SM = PBI / "RetailInventory.SemanticModel"
RP = PBI / "RetailInventory.Report"
SCHEMAS = (REPO / ".." / "shared" / "schemas" / "microsoft-fabric").resolve()
FABRIC_URL = "https://developer.microsoft.com/json-schemas/fabric/"
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 1, 22, 9, 37, 30)  # UTCNOW() of the DAX interpreter and now() of the SQL twins


# =================================================================================================== TMDL --
@dataclass
class Node:
    """One TMDL object (``table x``, ``column y``, ``measure z = ...``) with its properties and children."""

    keyword: str
    name: str = ""
    value: str | None = None  # the expression after ``=``
    depth: int = -1
    props: dict[str, str | bool] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def kids(self, keyword: str) -> list[Node]:
        return [c for c in self.children if c.keyword == keyword]


OBJECTS = {"model", "database", "table", "column", "measure", "partition", "relationship", "role",
           "tablePermission", "expression", "annotation", "hierarchy", "level", "culture", "perspective",
           "calculationGroup", "calculationItem", "queryGroup", "ref", "variation", "extendedProperty"}


def unquote(name: str) -> str:
    name = name.strip()
    if name.startswith("'") and name.endswith("'"):
        return name[1:-1].replace("''", "'")
    return name


def split_ref(ref: str) -> tuple[str, str]:
    """``table.column`` / ``'a table'.'a column'`` of a relationship end."""
    m = re.fullmatch(r"('(?:[^']|'')+'|[^.']+)\.('(?:[^']|'')+'|.+)", ref.strip())
    assert m, ref
    return unquote(m.group(1)), unquote(m.group(2))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip("\t"))


def parse_tmdl(text: str) -> list[Node]:
    """Top-level objects of one TMDL file. Supports what the TMDL docs define and this project uses: objects
    (``keyword name [= expression]``), properties (``name: value``, ``name = expression``, flags), multi-line
    expressions indented two levels below their object or property, ``///`` descriptions, ``ref`` lines."""
    assert re.search(r"^ ", text, re.M) is None, "TMDL objects and properties are indented with tabs"
    lines = text.splitlines()
    root = Node("root")
    stack = [root]
    i = 0

    def body(start: int, depth: int) -> tuple[list[str], int]:
        out, j = [], start
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= depth + 2):
            out.append(lines[j])
            j += 1
        while out and not out[-1].strip():
            out.pop()
            j -= 1
        return out, j

    while i < len(lines):
        raw = lines[i]
        i += 1
        s = raw.strip()
        if not s or s.startswith("//"):
            continue
        depth = _indent(raw)
        while stack[-1].depth >= depth:
            stack.pop()
        parent = stack[-1]
        word = s.split()[0].rstrip(":")
        if word in OBJECTS and not re.match(r"^\w+\s*[:=]", s):
            rest = s[len(word):].strip()
            if word == "ref":
                kind, _, nm = rest.partition(" ")
                parent.children.append(Node("ref", unquote(nm), kind, depth))
                continue
            m = re.fullmatch(r"('(?:[^']|'')*'|[^=]*?)\s*(?:=\s*(.*))?", rest)
            name, value = unquote(m.group(1)), m.group(2)
            node = Node(word, name, value, depth)
            if value is not None:
                more, i = body(i, depth)
                if more:
                    strip = min(_indent(x) for x in more if x.strip())
                    node.value = "\n".join(([value] if value.strip() else []) + [x[strip:] for x in more])
            parent.children.append(node)
            stack.append(node)
            continue
        m = re.fullmatch(r"(\w+)\s*:\s*(.*)", s)
        if m:
            assert depth == parent.depth + 1, f"property {s!r} has no owning object (indented {depth - parent.depth} levels)"
            parent.props[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(r"(\w+)\s*=\s*(.*)", s)
        if m:
            more, i = body(i, depth)
            strip = min((_indent(x) for x in more if x.strip()), default=0)
            parent.props[m.group(1)] = "\n".join(([m.group(2)] if m.group(2).strip() else [])
                                                 + [x[strip:] for x in more])
            continue
        assert re.fullmatch(r"\w+", s), f"unparsed TMDL line: {raw!r}"
        assert depth == parent.depth + 1, \
            f"flag {s!r} indented {depth - parent.depth} levels under {parent.keyword} {parent.name}: it has no owning object"
        nxt = next((x for x in lines[i:] if x.strip() and not x.strip().startswith("//")), None)
        if nxt is not None and _indent(nxt) > depth:  # a property block (dataAccessOptions) owning flags/properties
            node = Node(s, "", None, depth)
            parent.children.append(node)
            stack.append(node)
            continue
        parent.props[s] = True
    return root.children


@dataclass
class Model:
    tables: dict[str, Node]
    relationships: list[dict[str, Any]]
    roles: dict[str, Node]
    expressions: dict[str, Node]
    model: Node
    refs: list[Node]

    def columns(self, table: str) -> dict[str, Node]:
        return {c.name: c for c in self.tables[table].kids("column")}

    def measures(self) -> dict[str, tuple[str, str]]:
        """measure name -> (home table, DAX)"""
        return {m.name: (t, m.value) for t, n in self.tables.items() for m in n.kids("measure")}

    def date_table(self) -> str:
        (t,) = [t for t, n in self.tables.items() if n.props.get("dataCategory") == "Time"]
        return t


def load_model() -> Model:
    d = SM / "definition"
    tables = {}
    for f in sorted((d / "tables").glob("*.tmdl")):
        (node,) = parse_tmdl(f.read_text())
        assert node.keyword == "table" and node.name == f.stem, f
        tables[node.name] = node
    rels = []
    for r in parse_tmdl((d / "relationships.tmdl").read_text()):
        ft, fc = split_ref(r.props["fromColumn"])
        tt, tc = split_ref(r.props["toColumn"])
        rels.append({"id": r.name, "from": (ft, fc), "to": (tt, tc), **r.props})
    roles = {}
    for f in sorted((d / "roles").glob("*.tmdl")):
        (node,) = parse_tmdl(f.read_text())
        roles[node.name] = node
    expressions = {e.name: e for e in parse_tmdl((d / "expressions.tmdl").read_text())}
    top = parse_tmdl((d / "model.tmdl").read_text())
    (model,) = [n for n in top if n.keyword == "model"]
    return Model(tables, rels, roles, expressions, model, [n for n in top if n.keyword == "ref"])


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model()


@functools.lru_cache(maxsize=None)
def parse_m(text: str):
    """pbi-parsers' M (Power Query) AST, parsed once per text (the parser takes ~0.5 s per partition)."""
    from pbi_parsers import pq

    return pq.to_ast(text)


@functools.lru_cache(maxsize=None)
def parse_dax(text: str):
    """pbi-parsers' DAX AST, parsed once per text; None when the text is not DAX."""
    from pbi_parsers import dax

    return dax.to_ast(text)


@functools.lru_cache(maxsize=None)
def odbc_sql(partition_source: str) -> str:
    """The SQL text of the ``Odbc.Query(connection, sql)`` call in an M expression (parsed with pbi-parsers)."""
    from pbi_parsers.pq.exprs import FunctionExpression, LiteralStringExpression

    ast = parse_m(partition_source)
    calls = [f for f in ast.find_all(FunctionExpression)
             if ".".join(t.text for t in f.name.name_parts) == "Odbc.Query"]
    assert len(calls) == 1, partition_source
    sql = calls[0].args[1]
    assert isinstance(sql, LiteralStringExpression), "the SQL must be a literal: no query folding surprises"
    return sql.value.text[1:-1].replace('""', '"')


def odbc_tables(model: Model) -> dict[str, str]:
    """table -> SQL of its one ODBC partition"""
    out = {}
    for t, n in model.tables.items():
        parts = n.kids("partition")
        if parts and parts[0].value == "m" and "Odbc.Query" in parts[0].props["source"]:
            assert len(parts) == 1
            out[t] = odbc_sql(parts[0].props["source"])
    return out


# ============================================================================================ the schemas --
def pbip_json_files() -> list[Path]:
    files = [p for p in PBI.rglob("*") if p.is_file() and (
        p.name in (".platform", "definition.pbir", "definition.pbism") or p.suffix == ".json")]
    return sorted(p for p in files if ".pbi" not in p.relative_to(PBI).parts)


@pytest.fixture(scope="module")
def registry():
    """A referencing Registry that serves https://developer.microsoft.com/json-schemas/fabric/<path> from the
    offline copy (relative $refs between the schemas resolve through it too)."""
    if not (SCHEMAS / "fabric").is_dir():
        pytest.skip(f"offline Microsoft Fabric schemas not found at {SCHEMAS} (../shared/schemas/microsoft-fabric "
                    f"from the repository root)")
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    def retrieve(uri: str):
        assert uri.startswith(FABRIC_URL), f"schema outside the offline copy: {uri}"
        path = SCHEMAS / "fabric" / uri[len(FABRIC_URL):]
        assert path.is_file(), f"{uri}: no {path} in the offline copy"
        return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT7)

    return Registry(retrieve=retrieve)


def schema_errors(doc: dict, registry) -> list[str]:
    from jsonschema import Draft7Validator, validators

    schema = registry.get_or_retrieve(doc["$schema"]).value.contents
    cls = validators.validator_for(schema, default=Draft7Validator)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in cls(schema, registry=registry).iter_errors(doc)]


def test_the_project_has_every_part():
    pbip = json.loads((PBI / "RetailInventory.pbip").read_text())
    assert pbip["artifacts"] == [{"report": {"path": "RetailInventory.Report"}}]
    assert (RP / "definition.pbir").is_file() and (SM / "definition.pbism").is_file()
    for p in ("database.tmdl", "model.tmdl", "relationships.tmdl", "expressions.tmdl"):
        assert (SM / "definition" / p).is_file(), p
    assert (RP / "definition" / "version.json").is_file() and (RP / "definition" / "report.json").is_file()
    pbir = json.loads((RP / "definition.pbir").read_text())
    assert (RP / pbir["datasetReference"]["byPath"]["path"]).resolve() == SM.resolve()
    for item, kind in ((SM, "SemanticModel"), (RP, "Report")):
        assert json.loads((item / ".platform").read_text())["metadata"]["type"] == kind


@pytest.mark.parametrize("path", pbip_json_files(), ids=lambda p: str(p.relative_to(PBI)))
def test_json_validates_against_its_declared_microsoft_schema(path, registry):
    doc = json.loads(path.read_text())
    assert doc.get("$schema", "").startswith(FABRIC_URL), f"{path} declares no Fabric $schema"
    assert schema_errors(doc, registry) == []


def test_schema_validation_catches_errors(registry):
    """The check above is not vacuous: the offline schemas reject broken files."""
    visual = json.loads(next(RP.rglob("visual.json")).read_text())
    bad = copy.deepcopy(visual)
    bad["position"].pop("width")
    bad["visual"]["query"]["queryState"]["Values" if "Values" in bad["visual"]["query"]["queryState"]
                                         else next(iter(bad["visual"]["query"]["queryState"]))] = {"projections": 1}
    assert schema_errors(bad, registry)
    pbir = json.loads((RP / "definition.pbir").read_text())
    pbir["datasetReference"]["byName"] = "x"
    assert schema_errors(pbir, registry)
    page = json.loads(next(RP.rglob("page.json")).read_text())
    page["displayOption"] = "Sideways"
    assert schema_errors(page, registry)


# ========================================================================================= model structure --
def test_tmdl_parser_reads_the_whole_model(model):
    assert {r.value for r in model.refs} == {"table", "role"}
    assert {r.name for r in model.refs if r.value == "table"} == set(model.tables)
    assert {r.name for r in model.refs if r.value == "role"} == set(model.roles) == {"Store Manager"}
    assert len(model.tables) >= 18 and len(model.measures()) >= 50
    for t, n in model.tables.items():
        assert n.kids("partition"), f"{t} has no partition"
        for c in n.kids("column"):
            assert c.props.get("dataType") in TMDL_TYPES, (t, c.name)
            assert c.props.get("sourceColumn"), (t, c.name)


def test_parameters_and_every_partition_use_them(model):
    from pbi_parsers.pq.exprs import IdentifierExpression

    params = {}
    for name, e in model.expressions.items():
        assert parse_m(e.value) is not None, name
        m = re.search(r'meta \[IsParameterQuery=true, Type="(\w+)"', e.value)
        assert m, f"{name} is not a parameter"
        params[name] = m.group(1)
    assert params == {"Server": "Text", "Port": "Number", "Database": "Text"}
    sql = odbc_tables(model)
    assert set(sql) == {t for t in model.tables if t.startswith("v_")}
    for t in sql:
        src = model.tables[t].kids("partition")[0].props["source"]
        ids = {".".join(tok.text for tok in i.name_parts) for i in parse_m(src).find_all(IdentifierExpression)}
        assert {"Server", "Port", "Database"} <= ids, t
        assert "driver={ClickHouse ODBC Driver (Unicode)}" in src, t
        assert re.fullmatch(rf"SELECT [\w, ]+ FROM {t}", sql[t]), sql[t]
    for t, n in model.tables.items():
        for p in n.kids("partition"):
            assert p.props.get("mode") == "import", (t, "the ODBC connector imports")
            if p.value == "m":
                assert parse_m(p.props["source"]) is not None, t


def test_relationships_form_a_star_without_ambiguity(model):
    dims = {"v_dim_date", "v_dim_store", "v_dim_product"}
    pairs = set()
    for r in model.relationships:
        (ft, fc), (tt, tc) = r["from"], r["to"]
        assert fc in model.columns(ft) and tc in model.columns(tt), r
        assert model.columns(ft)[fc].props["dataType"] == model.columns(tt)[tc].props["dataType"], r
        assert model.columns(tt)[tc].props["dataType"] in {"int64", "string"}, r
        assert tt in dims and ft not in dims, f"{ft} -> {tt}: facts filter nothing, dimensions filter facts"
        assert r.get("crossFilteringBehavior", "oneDirection") == "oneDirection", r
        assert r.get("isActive", "true") == "true", r
        assert r.get("fromCardinality", "many") == "many" and r.get("toCardinality", "one") == "one", r
        assert (ft, tt) not in pairs, f"two relationships between {ft} and {tt}"
        pairs.add((ft, tt))
    # every dimension reaches each fact by one edge and nothing else links tables: one filter path per pair
    star = {("v_sales_daily", "v_dim_store"): "store_key", ("v_fact_inventory", "v_dim_product"): "product_key",
            ("v_live_sku_metrics", "v_dim_product"): "product_id", ("v_reorder_latest", "v_dim_store"): "store_id",
            ("v_sales_daily", "v_dim_date"): "date_key"}
    for (ft, tt), fc in star.items():
        assert any(r["from"] == (ft, fc) and r["to"][0] == tt for r in model.relationships), (ft, tt)
    related = {r["from"][0] for r in model.relationships}
    standalone = {"v_model_metrics", "v_model_registry", "v_stream_batches", "v_stream_health_hourly",
                  "v_stream_health_latest", "v_stream_offsets_latest", "v_stream_quarantine_hourly"}
    assert related == {t for t in model.tables if t.startswith("v_") and t not in dims} - standalone


def test_date_table_is_marked(model):
    t = model.date_table()
    assert t == "v_dim_date"
    keys = [c for c in model.tables[t].kids("column") if c.props.get("isKey")]
    assert [c.name for c in keys] == ["date"] and keys[0].props["dataType"] == "dateTime"


def dax_refs(expr: str) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """(columns, measures, tables) named by a DAX expression, parsed with pbi-parsers."""
    from pbi_parsers.dax.exprs import (ColumnExpression, IdentifierExpression, MeasureExpression, TableExpression,
                                       VariableExpression)

    ast = parse_dax(expr)
    assert ast is not None, expr
    cols = {(unquote(c.table.text), c.column.text[1:-1]) for c in ast.find_all(ColumnExpression)}
    meas = {m.name.text[1:-1] for m in ast.find_all(MeasureExpression)}
    tabs = {unquote(t.name.text) for t in ast.find_all(TableExpression)}
    # pbi-parsers reads an unquoted table name (COUNTROWS ( v_restock_alerts )) as an identifier, like a VAR
    # or an interval keyword (DAY, MINUTE)
    variables = {v.var_name.text for v in ast.find_all(VariableExpression)}
    tabs |= {i.name.text for i in ast.find_all(IdentifierExpression)} - variables - DAX_KEYWORDS
    return cols, meas, tabs


TMDL_TYPES = {"int64", "double", "string", "dateTime", "boolean", "decimal"}
AGG_NAMES = {0: "Sum", 1: "Avg", 4: "Max"}  # QueryAggregateFunction values used by the report
DAX_KEYWORDS = {"SECOND", "MINUTE", "HOUR", "DAY", "WEEK", "MONTH", "QUARTER", "YEAR"}


def test_every_measure_parses_and_names_existing_fields(model):
    measures = model.measures()
    for name, (_home, expr) in measures.items():
        cols, meas, tabs = dax_refs(expr)
        for t, c in cols:
            assert c in model.columns(t), f"[{name}] names {t}[{c}]"
        assert meas <= set(measures), f"[{name}] names unknown measures {meas - set(measures)}"
        assert tabs <= set(model.tables), f"[{name}] names unknown tables {tabs - set(model.tables)}"
    assert {h for h, _ in measures.values()} == {"_Measures"}


def test_dax_parser_rejects_broken_dax():
    from pbi_parsers import dax

    for bad in ("SUM ( v_sales_daily[revenue] ", "SUM ( v_sales_daily[revenue] ) +", "DIVIDE ( [a] [b] )",
                "[Revenue] +* 2", "VAR x = 1"):
        with pytest.raises((AssertionError, ValueError)):
            assert dax.to_ast(bad) is not None


def test_store_manager_role_filters_the_store_dimension(model):
    role = model.roles["Store Manager"]
    assert role.props.get("modelPermission") == "read"
    perms = {p.name: p.value for p in role.kids("tablePermission")}
    assert set(perms) == {"v_dim_store", "store_managers"}
    for t, expr in perms.items():
        cols, meas, _ = dax_refs(expr)
        assert all(c in model.columns(tt) for tt, c in cols), expr
        assert meas <= set(model.columns(t)), expr  # bare [column] = the filtered table's column
        assert "USERPRINCIPALNAME" in expr
    assert len(store_manager_rows(model)) >= 1


def store_manager_rows(model: Model) -> list[tuple[str, str]]:
    src = model.tables["store_managers"].kids("partition")[0].props["source"]
    return re.findall(r'\{\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\}', src)


# ================================================================================================ report --
def report_pages() -> list[tuple[dict, list[dict]]]:
    meta = json.loads((RP / "definition" / "pages" / "pages.json").read_text())
    out = []
    for name in meta["pageOrder"]:
        d = RP / "definition" / "pages" / name
        page = json.loads((d / "page.json").read_text())
        assert page["name"] == name
        visuals = [json.loads(v.read_text()) for v in sorted((d / "visuals").glob("*/visual.json"))]
        for v, f in zip(visuals, sorted((d / "visuals").glob("*/visual.json")), strict=True):
            assert v["name"] == f.parent.name
        out.append((page, visuals))
    folders = {p.name for p in (RP / "definition" / "pages").iterdir() if p.is_dir()}
    assert folders == set(meta["pageOrder"]), "every page folder is listed in pages.json, and only those"
    return out


def bound_fields(obj: Any) -> list[tuple[str, str, str]]:
    """Every (Column|Measure, Entity, Property) a visual's JSON binds: projections, sorts, filters, formatting."""
    out = []
    if isinstance(obj, dict):
        for kind in ("Column", "Measure"):
            ref = obj.get(kind)
            if isinstance(ref, dict) and "Property" in ref:
                out.append((kind, ref["Expression"]["SourceRef"]["Entity"], ref["Property"]))
        for v in obj.values():
            out += bound_fields(v)
    elif isinstance(obj, list):
        for v in obj:
            out += bound_fields(v)
    return out


def test_report_has_the_four_dashboards():
    pages = report_pages()
    assert [p["displayName"] for p, _ in pages] == ["Executive", "Store manager", "Inventory analyst",
                                                   "Data quality & ML"]
    for page, visuals in pages:
        types = {v["visual"]["visualType"] for v in visuals}
        assert "slicer" in types and {"card", "multiRowCard"} & types, page["displayName"]
        assert {"lineChart", "clusteredBarChart", "clusteredColumnChart"} & types, page["displayName"]
        assert "tableEx" in types, page["displayName"]
        for v in visuals:
            p = v["position"]
            assert p["x"] >= 0 and p["y"] >= 0 and p["x"] + p["width"] <= page["width"] + 0.5, v["name"]
            assert p["y"] + p["height"] <= page["height"] + 0.5, v["name"]


def test_every_bound_field_exists_in_the_model(model):
    measures = model.measures()
    n = 0
    for page, visuals in report_pages():
        for v in visuals:
            fields = bound_fields(v)
            assert fields or v["visual"]["visualType"] in ("textbox", "shape"), v["name"]
            for kind, entity, prop in fields:
                n += 1
                assert entity in model.tables, (page["displayName"], v["name"], entity)
                if kind == "Column":
                    assert prop in model.columns(entity), (page["displayName"], v["name"], entity, prop)
                    assert not model.columns(entity)[prop].props.get("isHidden"), (entity, prop, "hidden")
                else:
                    assert measures.get(prop, (None,))[0] == entity, (page["displayName"], v["name"], prop)
            for role in v["visual"]["query"]["queryState"].values():
                for proj in role["projections"]:
                    (kind, entity, prop), = bound_fields(proj["field"])
                    agg = proj["field"].get("Aggregation")
                    want = f"{AGG_NAMES[agg['Function']]}({entity}.{prop})" if agg else f"{entity}.{prop}"
                    assert proj["queryRef"] == want, proj
    assert n >= 100


def test_data_quality_page_shows_what_the_stream_health_page_counts():
    """The Data quality & ML page's per-query table and hourly chart show what the Streamlit Stream health page
    shows per query and per hour: rows dropped as late, Kafka records expired, rows ClickHouse refused and the
    stream set aside in quarantine (``rows_set_aside``), duplicates."""
    (page, visuals), = [(p, v) for p, v in report_pages() if p["displayName"] == "Data quality & ML"]
    shown = {}
    for v in visuals:
        fields = bound_fields(v["visual"]["query"])
        for t in ("v_stream_health_latest", "v_stream_health_hourly"):
            if any(e == t for _, e, _ in fields):
                shown[t] = {prop for _, _, prop in fields}
    counts = {"late_rows_dropped", "records_expired", "duplicates_dropped"}
    assert counts <= shown["v_stream_health_latest"] and "Stream Rows Set Aside" in shown["v_stream_health_latest"]
    assert counts | {"rows_set_aside"} <= shown["v_stream_health_hourly"]


def test_hourly_stream_chart_counts_an_expired_record_once_as_the_measure_does(model):
    """Both streaming queries read the sales and inventory topics, so a Kafka record deleted before they read it is
    counted by each (``records_expired`` of ``raw`` and of ``windows``). [Stream Records Expired] takes the larger
    query's count (MAX over ``v_stream_health_latest``); the hourly chart of the Data quality & ML page must do the
    same per hour: ``records_expired`` aggregated with Max over the hour's query rows, or split by ``query`` (one
    series per query). Before 2026-12-06 it summed both queries (Sum, no series): every lost record twice."""
    measures = model.measures()
    table, expr = measures["Stream Records Expired"][:2]
    assert table == "_Measures" and re.fullmatch(r"\s*MAX\s*\(\s*v_stream_health_latest\[records_expired\]\s*\)\s*",
                                                 expr), expr
    (page, visuals), = [(p, v) for p, v in report_pages() if p["displayName"] == "Data quality & ML"]
    charts = [v for v in visuals if any(e == "v_stream_health_hourly" for _, e, _ in bound_fields(v["visual"]["query"]))]
    assert len(charts) == 1, [v["name"] for v in charts]
    state = charts[0]["visual"]["query"]["queryState"]
    category = [bound_fields(p["field"])[0][2] for p in state["Category"]["projections"]]
    series = [bound_fields(p["field"])[0][2] for p in state.get("Series", {}).get("projections", [])]
    assert category == ["hour_start"]
    expired = [p for p in state["Y"]["projections"] if bound_fields(p["field"])[0][2] == "records_expired"]
    assert len(expired) == 1, "the chart shows records_expired once"
    agg = expired[0]["field"]["Aggregation"]["Function"]
    assert series == ["query"] or AGG_NAMES.get(agg) == "Max", (
        f"records_expired aggregated with {AGG_NAMES.get(agg, agg)} over both queries and no series per query: "
        "a record both queries lost is counted twice")
    assert expired[0]["queryRef"] == f"{AGG_NAMES[agg]}(v_stream_health_hourly.records_expired)"


# ========================================================================== the real engine (ClickHouse) --
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The ClickHouse HTTP endpoint (service ``clickhouse`` of the native supervisor, chDB behind it) on free
    ports with a fresh state; a fresh database with every migration; yields (settings, database)."""
    from core.clickhouse import migrate
    from ops import local

    with local.platform_up(tmp_path_factory.mktemp("pbi-state"), ["clickhouse"],
                           CLICKHOUSE_DATABASE=f"pbi_{uuid.uuid4().hex[:8]}") as s:
        try:   # the known data's micro-batches are dated January 2026: kept from stream_batches' 14-day TTL
            migrate(s.model_copy(update={"clickhouse_stream_batches_retention_days": 3_650}))
            yield s, s.clickhouse_database
        finally:
            local.down(s)


@pytest.fixture(scope="module")
def writer(engine):
    from core.clickhouse import new_client

    s, db = engine
    c = new_client(s, db)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reader(engine):
    """bi_reader, the read-only user of the Power BI connection (readonly=1)."""
    from core.clickhouse import new_client

    s, db = engine
    c = new_client(s, db, readonly=True)
    yield c
    c.close()


def _base(ch_type: str) -> str:
    t = ch_type
    while (m := re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", t)):
        t = m.group(1)
    return t


def compatible(tmdl_type: str, ch_type: str) -> bool:
    """Can a ClickHouse column of ``ch_type`` (through the ODBC driver) load into a TMDL column of ``tmdl_type``?
    UInt64 never does: Power BI's whole number is a signed 64-bit integer (the driver hands UInt64 over as a
    decimal or binary)."""
    t = _base(ch_type)
    return {
        "int64": re.fullmatch(r"Int(8|16|32|64)|UInt(8|16|32)", t) is not None,
        "double": re.fullmatch(r"Float(32|64)|Decimal.*", t) is not None,
        "decimal": re.fullmatch(r"Decimal.*", t) is not None,
        "string": re.fullmatch(r"String|FixedString\(\d+\)|UUID|Enum(8|16)?\(.*\)", t) is not None,
        "dateTime": re.fullmatch(r"Date|Date32|DateTime(\(.*\))?|DateTime64\(.*\)", t) is not None,
        "boolean": t == "Bool",
    }[tmdl_type]


def test_type_mapping_rejects_uint64():
    assert compatible("int64", "Nullable(Int64)") and compatible("int64", "UInt32")
    assert not compatible("int64", "UInt64") and not compatible("string", "Int64")
    assert compatible("dateTime", "DateTime64(3, 'UTC')") and compatible("string", "LowCardinality(String)")


@pytest.mark.integration
def test_every_source_query_returns_the_declared_columns_and_types(model, reader, known_data):
    for table, sql in odbc_tables(model).items():
        r = reader.query(sql)
        declared = [(c.props["sourceColumn"], c.props["dataType"]) for c in model.tables[table].kids("column")]
        assert list(r.column_names) == [c for c, _ in declared], table
        for (col, tmdl_type), ch in zip(declared, r.column_types, strict=True):
            assert compatible(tmdl_type, ch.name), f"{table}.{col}: ClickHouse {ch.name} into TMDL {tmdl_type}"
        assert r.row_count > 0, f"{table}: the known dataset left it empty"


@pytest.mark.integration
def test_model_covers_every_view_column(model, reader):
    """A column added to a view shows up here until the model declares it (or lists it as left out)."""
    left_out: dict[str, set[str]] = {}
    for table in odbc_tables(model):
        have = [row[0] for row in reader.query(f"DESCRIBE TABLE {table}").result_rows]
        declared = [c.props["sourceColumn"] for c in model.tables[table].kids("column")]
        assert set(have) - set(declared) <= left_out.get(table, set()), (table, set(have) - set(declared))


#: every migration defining a BI view (v_*): 030, 080, 084, 086, 091, 094, 097
VIEW_FILES = tuple(f.name for f in sorted((REPO / "clickhouse" / "migrations").glob("*.sql"))
                   if "CREATE OR REPLACE VIEW {db}.v_" in f.read_text())
#: views of VIEW_FILES deliberately not imported, with the reason
VIEWS_LEFT_OUT = {"v_fact_sales": "one row per POS line (millions): v_sales_daily carries the same figures per day"}


def test_model_covers_every_bi_view(model):
    """A view added by any migration (v_*) shows up here until the
    model imports it or VIEWS_LEFT_OUT says why not."""
    views = {v for f in VIEW_FILES for v in re.findall(r"CREATE OR REPLACE VIEW \{db\}\.(\w+)",
                                                       (REPO / "clickhouse" / "migrations" / f).read_text())}
    assert "v_stream_health_latest" in views
    assert views - set(odbc_tables(model)) == set(VIEWS_LEFT_OUT)
    assert set(odbc_tables(model)) <= views


def test_the_docs_name_every_file_defining_a_model_view(model):
    """docs/dashboards.md and powerbi/dataset.md list the migration files defining the model's views: until
    2026-12-07 both left out 084 (v_quarantine_summary, v_stream_quarantine_hourly) and 086
    (v_stream_health_latest, v_stream_offsets_latest), and dataset.md credited stream health to 080 alone. The
    lists equal the files that define a v_* view an ODBC partition of the model reads."""
    tables = set(odbc_tables(model))
    defining = {f for f in VIEW_FILES for v in re.findall(r"CREATE OR REPLACE VIEW \{db\}\.(\w+)",
                                                        (REPO / "clickhouse" / "migrations" / f).read_text())
                if v in tables}
    assert {"084_quarantine_refused_rows_apart.sql", "086_stream_health_latest_outlives_retention.sql"} <= defining
    for doc, start, end in [("docs/dashboards.md", "- a semantic model in TMDL over the `v_*` views of",
                             "`v_dim_date` marked as date table"),
                            ("powerbi/dataset.md", "Every table of the model is one view of", "(applied by")]:
        text = (REPO / doc).read_text()
        part = text[text.index(start):text.index(end, text.index(start))]
        assert set(re.findall(r"\b(\d{3}_\w+\.sql)\b", part)) == defining, doc


@pytest.mark.integration
def test_one_sides_of_relationships_are_unique(model, reader, known_data):
    for r in model.relationships:
        tt, tc = r["to"]
        total, distinct, nulls = reader.query(
            f"SELECT count(), uniqExact({tc}), countIf(isNull({tc})) FROM {tt}").result_rows[0]
        assert total == distinct and nulls == 0, (tt, tc)


@pytest.mark.integration
def test_bi_reader_cannot_write(reader, writer):
    from clickhouse_connect.driver.exceptions import DatabaseError

    for sql in ("INSERT INTO quarantine_events (event_type, reason) VALUES ('x', 'y')",
                "CREATE TABLE pbi_probe (a UInt8) ENGINE = Memory",
                "ALTER TABLE etl_runs DELETE WHERE 1",
                "DROP TABLE etl_runs",
                "CREATE OR REPLACE VIEW v_dim_store AS SELECT 1"):
        with pytest.raises(DatabaseError) as e:
            reader.command(sql)
        assert "164" in str(e.value) or "readonly" in str(e.value).lower(), (sql, str(e.value)[:300])
    with pytest.raises(DatabaseError):
        reader.insert("quarantine_events", [["x", "t", 0, 0, None, "r", "{}", 0, NOW]],
                      column_names=["event_type", "topic", "partition", "offset", "kafka_timestamp", "reason",
                                    "raw_payload", "batch_id", "ingested_at"])
    assert writer.query("SELECT count() FROM system.tables WHERE database = currentDatabase() "
                        "AND name = 'pbi_probe'").result_rows[0][0] == 0
    assert writer.query("SELECT count() FROM quarantine_events WHERE event_type = 'x'").result_rows[0][0] == 0


# ============================================================================================ known data --
STORES = [("S001", 101, "Lisbon Baixa", "Lisbon", "Portugal", "PT", "South"),
          ("S002", 102, "Porto Centro", "Porto", "Portugal", "PT", "North"),
          ("S003", 103, "Madrid Sol", "Madrid", "Spain", "ES", "South")]
PRODUCTS = [("P-TEA", 11, "Tea 80 bags", "Grocery", "Tea", "Acme", "Acme Ltd", 1.2, 2.5),
            ("P-MUG", 12, "Mug", "Home", "Kitchen", "Potters", "Potters SA", 2.0, 6.0),
            ("P-JAM", 13, "Jam 300 g", "Grocery", "Spreads", "Acme", "Acme Ltd", None, 3.2),
            ("P-CUP", 14, "Cup", "Home", "Kitchen", "Potters", "Potters SA", 0.8, 2.0)]
DAYS = ([dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(21)]
        + [dt.date(2025, 1, 1) + dt.timedelta(days=i) for i in range(21)])


def pooled_value(version: int, model_kind: str, metric: str) -> float:
    """the known data's pooled (horizon 0) backtest value: deterministic, never one of the per-horizon averages"""
    return round({"wape": 0.40, "rmsse": 0.80, "mae": 1.10, "bias": -0.02}[metric] + 0.05 * (2 - version)
                 + (0.15 if model_kind == "seasonal_naive" else 0.0), 4)


def dkey(d: dt.date) -> int:
    return d.year * 10000 + d.month * 100 + d.day


def ts(*a) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


@pytest.fixture(scope="module")
def known_data(engine, writer):
    """A small deterministic dataset written through the real tables (and the ETL's own daily aggregation when
    it has one): 42 days (21 in 2026, the same 21 in 2025), 3 stores, 4 SKUs, streaming windows, alerts,
    quarantine, ETL runs, forecasts with actuals, backtests, reorder and demand-class runs."""
    import random

    rng = random.Random(8)
    w = writer
    w.insert("dim_date", [[dkey(d), d, d.isoweekday(), d.strftime("%A"), d.day, d.isocalendar()[1], d.month,
                           d.strftime("%B"), (d.month - 1) // 3 + 1, d.year, int(d.isoweekday() >= 6), 0, "", ""]
                          for d in DAYS],
             column_names=["date_key", "date", "day_of_week", "day_name", "day_of_month", "week_of_year", "month",
                           "month_name", "quarter", "year", "is_weekend", "is_holiday", "holiday_name",
                           "holiday_country"])
    w.insert("dim_store", [[k, s, n, c, co, cc, r, 1] for s, k, n, c, co, cc, r in STORES],
             column_names=["store_key", "store_id", "store_name", "city", "country", "country_code", "region",
                           "is_known"])
    w.insert("dim_product", [[k, s, n, c, sc, b, sup, cost, price, 365, 10, 200, 1]
                             for s, k, n, c, sc, b, sup, cost, price in PRODUCTS],
             column_names=["product_key", "sku", "product_name", "category", "sub_category", "brand", "supplier",
                           "unit_cost", "unit_price", "shelf_life_days", "reorder_point", "storage_capacity",
                           "is_known"])
    # POS lines of the star schema
    lines, n = [], 0
    for d in DAYS:
        for _, sk, *_ in STORES:
            for _sku, pk, *_r, cost, price in PRODUCTS:
                for _ in range(rng.randint(0, 3)):
                    q = rng.choice([-1, 1, 1, 2, 3, 5])
                    rev = Decimal(str(round(q * price, 4)))
                    c = None if cost is None or rng.random() < 0.1 else Decimal(str(round(q * cost, 4)))
                    n += 1
                    lines.append([f"L{n}", dkey(d), ts(d.year, d.month, d.day, 12), pk, sk, "CARD", q, price, rev, c,
                                  None if c is None else rev - c, int(q < 0)])
    w.insert("fact_sales", lines, column_names=["sale_id", "date_key", "event_time", "product_key", "store_key",
                                                "payment_method", "quantity", "unit_price", "revenue", "cost",
                                                "profit", "is_return"])
    try:
        from etl.star_schema import rebuild_sales_daily
    except ImportError:  # views that still aggregate fact_sales themselves
        rebuild_sales_daily = None
    if rebuild_sales_daily is not None:
        for d in DAYS:
            rebuild_sales_daily(w, engine[1], dkey(d))
    inv = []
    for d in DAYS[:21]:
        for _, sk, *_ in STORES:
            for _, pk, *_ in PRODUCTS:
                stock = rng.choice([0, 3, 8, 15, 30, 60])
                inv.append([dkey(d), sk, pk, stock, 0, rng.randint(0, 6), 0, 10.0, rng.choice([None, 4.0]), "sigma",
                            int(stock < 10)])
    w.insert("fact_inventory", inv, column_names=["date_key", "store_key", "product_key", "closing_stock",
                                                  "is_carried_forward", "units_sold", "units_returned",
                                                  "reorder_point", "safety_stock", "safety_stock_method",
                                                  "below_reorder_point"])
    # streaming: 5-minute windows on the last day (and two windows on a day the ETL has not loaded yet)
    store_rows, sku_rows = [], []
    for day, hours in ((dt.date(2026, 1, 21), range(9, 12)), (dt.date(2026, 1, 22), range(8, 9))):
        for h in hours:
            for m5 in (0, 5):
                start = ts(day.year, day.month, day.day, h, m5)
                for s, *_ in STORES:
                    units = 0
                    for sku, *_r, price in PRODUCTS:
                        u = rng.randint(0, 4)
                        units += u
                        z = rng.choice([0.1, -0.5, 1.2, 3.4, -4.0])
                        cover = None if u == 0 else round(rng.uniform(1, 40), 2)
                        risk = ("UNKNOWN" if cover is None
                                else "HIGH" if cover < 8 else "MEDIUM" if cover < 24 else "LOW")
                        sku_rows.append([start, start + dt.timedelta(minutes=5), s, sku, u, 0, u * price, u, 1,
                                         rng.randint(0, 40), rng.randint(0, 40), 10, u * 12.0, cover, risk, z,
                                         start + dt.timedelta(minutes=4), 1, 1, start])
                    store_rows.append([start, start + dt.timedelta(minutes=5), s, units, 0, units * 3.0,
                                       max(units - 1, 0), 4, rng.randint(0, 2), units * 12.0, rng.uniform(-2, 2), 1, 1,
                                       start])
    # a day earlier than the last 24 hours (kept by the TTL, which counts from the write time): the live measures
    # must leave it out;
    # first in the insert, so sku_window_latest (ReplacingMergeTree by window_start) keeps the newer windows
    early_store, early_sku = [], []
    for m5 in (0, 5):
        start = ts(2026, 1, 20, 10, m5)
        for k, (s, *_) in enumerate(STORES):
            for j, (sku, *_r, price) in enumerate(PRODUCTS):
                early_sku.append([start, start + dt.timedelta(minutes=5), s, sku, 2, 0, 2 * price, 2, 1, 20, 20, 10,
                                  24.0, 30.0, "LOW", 3.4 if j == k else 0.1, start + dt.timedelta(minutes=4), 1, 1,
                                  start])
            store_rows.insert(0, [start, start + dt.timedelta(minutes=5), s, 8 + k, 0, 500.0 + 100 * k, 7, 4, 0,
                                  96.0, 0.5, 1, 1, start])
    sku_rows[:0] = early_sku
    # updated_at = the write time, now: the window tables keep a window CLICKHOUSE_STREAM_RETENTION_DAYS after it
    written = dt.datetime.now(UTC)
    store_rows = [r[:-1] + [written] for r in store_rows]
    sku_rows = [r[:-1] + [written] for r in sku_rows]
    w.insert("store_metrics_5m", store_rows, column_names=[
        "window_start", "window_end", "store_id", "units_sold", "units_returned", "revenue", "transaction_count",
        "sku_count", "skus_high_risk", "sales_velocity", "anomaly_score", "batch_id", "version", "updated_at"])
    w.insert("sales_metrics_5m", sku_rows, column_names=[
        "window_start", "window_end", "store_id", "product_id", "units_sold", "units_returned", "revenue",
        "transaction_count", "inventory_update_count", "window_stock", "stock_level", "reorder_point",
        "sales_velocity", "hours_of_cover", "stockout_risk", "anomaly_score", "last_event_time", "batch_id",
        "version", "updated_at"])
    levels = []
    for s, *_ in STORES:
        for sku, *_ in PRODUCTS:
            lvl = rng.choice([None, 0, 4, 12, 50])
            levels.append([s, sku, lvl, None if lvl is None else ts(2026, 1, 21, 11, 3), 10,
                           int(lvl is not None and lvl < 10),
                           1, 1, ts(2026, 1, 21, 11, 4)])
    w.insert("inventory_levels", levels, column_names=["store_id", "product_id", "stock_level", "stock_time",
                                                       "reorder_point", "in_episode", "batch_id", "version",
                                                       "updated_at"])
    alerts = []
    for i, (s, sku, prio) in enumerate([("S001", "P-TEA", "CRITICAL"), ("S001", "P-MUG", "HIGH"),
                                        ("S002", "P-TEA", "MEDIUM"), ("S002", "P-JAM", "HIGH"),
                                        ("S003", "P-CUP", "LOW"), ("S002", "P-CUP", "CRITICAL")]):
        t = ts(2026, 1, 10 + 2 * i, 10, 0)
        alerts.append([f"A{i}", s, sku, i, 10, 20 + i, 2.5, None if i == 4 else 3.0 + i, prio, t, t, 1, t])
    w.insert("restock_alerts", alerts, column_names=["alert_id", "store_id", "product_id", "current_stock",
                                                     "reorder_point", "recommended_quantity", "sales_velocity",
                                                     "hours_of_cover", "priority", "window_end", "alert_time",
                                                     "batch_id", "ingested_at"])
    q = [["sales_transaction", "retail-sales-transactions", 0, i, None, reason, "{}", 1, ts(2026, 1, day, 9, i)]
         for i, (reason, day) in enumerate([("quantity must be non-zero", 9), ("negative price", 9),
                                            ("event time in the future", 12), ("negative price", 15),
                                            ("not valid JSON", 20)])]
    # a window ClickHouse refused (not a Kafka record): counted apart from the quarantined records (since 2026-12-06)
    q.append(["sales_metrics_5m", "refused:sales_metrics_5m", -1, 7_700_000, None, "ClickHouse refused the row", "{}",
              2, ts(2026, 1, 12, 9, 30)])
    w.insert("quarantine_events", q, column_names=["event_type", "topic", "partition", "offset", "kafka_timestamp",
                                                   "reason", "raw_payload", "batch_id", "ingested_at"])
    runs = [[f"r{i}", f"d{i}", dkey(d), ts(d.year, d.month, d.day + 1, 8, 0), ts(d.year, d.month, d.day + 1, 8, 1),
             status, "done" if status == "success" else "load", 100, 0, 90, 48, 200, Decimal("512.5"), ""]
            for i, (d, status) in enumerate([(dt.date(2026, 1, 12), "success"), (dt.date(2026, 1, 13), "failed"),
                                             (dt.date(2026, 1, 13), "success"), (dt.date(2026, 1, 19), "failed")])]
    # the latest night (run n4, every row at its load's started_at 01-21 08:00): 01-13 re-checked, begun and reconciled;
    # its own day 01-20 begun and failed. MAX(status) at the latest started_at said 'success' (until 2026-12-07)
    night = ts(2026, 1, 21, 8, 0)
    for i, (d, status, stage, end) in enumerate([(dt.date(2026, 1, 13), "begun", "load", 1),
                                                 (dt.date(2026, 1, 13), "begun", "load_done", 2),
                                                 (dt.date(2026, 1, 13), "success", "quality_check", 9),
                                                 (dt.date(2026, 1, 20), "begun", "load", 3),
                                                 (dt.date(2026, 1, 20), "failed", "load", 4)]):
        runs.append([f"n4-{i}", "scheduled__2026-01-20", dkey(d), night, night + dt.timedelta(minutes=end), status,
                     stage, 0 if status == "begun" else 100, 0, 0 if status == "begun" else 90, 0, 0, Decimal(0), ""])
    w.insert("etl_runs", runs, column_names=["run_id", "dag_run_id", "date_key", "started_at", "finished_at",
                                             "status", "stage", "raw_sales_rows", "duplicate_sales_rows",
                                             "fact_sales_rows", "fact_inventory_rows", "units_net", "revenue",
                                             "message"])
    preds, actual = [], []
    for origin, version in ((dt.date(2026, 1, 7), 1), (dt.date(2026, 1, 14), 2)):
        for s, *_ in STORES:
            for sku, *_ in PRODUCTS:
                for h in range(1, 8):
                    y = round(rng.uniform(0, 6), 3)
                    preds.append([origin, origin + dt.timedelta(days=h), h, s, sku, y, max(y - 1, 0), y + 1,
                                  max(y - 2, 0), y + 2, version, origin])
    for d in DAYS[:21]:
        for s, *_ in STORES:
            for sku, *_ in PRODUCTS:
                actual.append([d, s, sku, float(rng.randint(0, 6)), d])
    for s, *_ in STORES:  # FORECAST_HORIZON is 14 by default: days 8..14 of the latest origin (no rng draws)
        for j, (sku, *_) in enumerate(PRODUCTS):
            for h in range(8, 15):
                y = 1.0 + 0.5 * j + 0.1 * h
                preds.append([dt.date(2026, 1, 14), dt.date(2026, 1, 14) + dt.timedelta(days=h), h, s, sku, y, y - 1,
                              y + 1, y - 1, y + 2, 2, dt.date(2026, 1, 14)])
    w.insert("forecast_predictions", preds, column_names=["forecast_origin", "target_date", "horizon", "store_id",
                                                          "product_id", "yhat", "lower80", "upper80", "lower95",
                                                          "upper95", "model_version", "run_date"])
    w.insert("features_daily", actual, column_names=["date", "store_id", "product_id", "units", "run_date"])
    mm = []
    for version, run in ((1, dt.date(2026, 1, 7)), (2, dt.date(2026, 1, 14))):
        for model_kind in ("gbt", "seasonal_naive"):
            for metric in ("wape", "rmsse", "mae"):
                for h in range(1, 8):
                    mm.append(["demand-forecast", version, run, model_kind, metric, h, round(rng.uniform(0.2, 0.9), 4),
                               "platform"])
            for h in range(1, 8):  # signed, without drawing from rng (the other tables' values stay as they were)
                bias = round(-0.06 + 0.01 * h + 0.1 * version, 4)
                mm.append(["demand-forecast", version, run, model_kind, "bias", h, bias, "platform"])
            for metric in ("wape", "rmsse", "mae", "bias"):  # horizon 0: pooled over horizons, as ml.forecast writes
                mm.append(["demand-forecast", version, run, model_kind, metric, 0, pooled_value(version, model_kind, metric),
                           "platform"])
    mm.append(["other-model", 2, dt.date(2026, 1, 14), "gbt", "wape", 1, 9.0, "platform"])
    w.insert("ml_model_metrics", mm, column_names=["model_name", "model_version", "run_date", "model", "metric",
                                                   "horizon", "value", "dataset"])
    w.insert("model_registry", [["demand-forecast", 1, dt.date(2026, 1, 7), ts(2026, 1, 7, 2), "models/v1", 0.41, 0.55,
                                 "{}", 0, None],
                                ["demand-forecast", 2, dt.date(2026, 1, 14), ts(2026, 1, 14, 2), "models/v2", 0.37,
                                 0.52, "{}", 1, ts(2026, 1, 14, 3)]],
             column_names=["model_name", "version", "run_date", "trained_at", "path", "backtest_wape",
                           "seasonal_naive_wape", "metrics", "is_champion", "promoted_at"])
    reorder, classes = [], []
    for as_of in (dt.date(2026, 1, 20), dt.date(2026, 1, 21)):
        for s, *_ in STORES:
            for sku, *_r, cost, _p in PRODUCTS:
                need = rng.random() < 0.5
                days_left = round(rng.uniform(0.5, 30), 2)
                reorder.append([as_of, s, sku, float(rng.randint(0, 40)), 2.5, 1.1, 3.0, 0.95, 4.2, 11.7, 30.0,
                                float(rng.randint(10, 40)) if need else 0.0, int(need), days_left,
                                "HIGH" if days_left < 3 else "MEDIUM" if days_left < 7 else "LOW", cost or 0.0, 2,
                                as_of])
                classes.append([as_of, s, sku, 56, round(rng.uniform(1, 3), 3), round(rng.uniform(0.1, 1), 3),
                                rng.choice(["smooth", "intermittent", "lumpy", "erratic"]), 1.5,
                                rng.randint(0, 30), int(rng.random() < 0.4), as_of])
    w.insert("reorder_recommendations", reorder, column_names=[
        "as_of_date", "store_id", "product_id", "stock", "mean_daily_demand", "sigma_daily", "lead_time_days",
        "service_level", "safety_stock", "reorder_point", "eoq", "reorder_qty", "reorder_needed",
        "days_until_stockout", "stockout_risk", "unit_cost", "model_version", "run_date"])
    # each batch's row as the sink writes it, then again (same committed_at) with the counts its progress adds:
    # the views read stream_batches with FINAL, so each batch counts once, with its counts
    # as streaming/job.py's queries read: raw every topic, windows the sales and inventory topics; 30 sales records
    # deleted before batch 2 read them are counted by both queries, 5 returns by raw only
    def batch(i, q, b, late):
        offs = {"retail-sales": {"0": 10 * b + i, "1": 5 * b}, "retail-inventory": {"0": 3 * b}}
        if q == "raw":
            offs["retail-returns"] = {"0": 4 * b}
        return [q, b, 100 * b + i, 90 * b, ts(2026, 1, 21, 11, b), ts(2026, 1, 21, 11, b, 2 + i), b % 2,
                (30 + 5 * (q == "raw")) * (b == 2), late, json.dumps(offs),
                ts(2026, 1, 21, 10, 50 + b) if q == "windows" else None, 2 * (b == 3) + (q == "raw")]
    cols = ["query", "batch_id", "input_rows", "output_rows", "started_at", "committed_at", "duplicates_dropped",
            "records_expired", "late_rows_dropped", "end_offsets", "event_time_max", "rows_set_aside"]
    w.insert("stream_batches", [batch(i, q, b, 0) for i, q in enumerate(("raw", "windows")) for b in range(1, 4)],
             column_names=cols)
    w.insert("stream_batches", [batch(1, "windows", b, 4 * b) for b in (2, 3)], column_names=cols)
    w.insert("sku_classification", classes, column_names=[
        "as_of_date", "store_id", "product_id", "window_days", "adi", "cv2", "demand_class", "mean_daily_demand",
        "days_since_last_sale", "is_slow_moving", "run_date"])
    return True


# ================================================================================= the model's data (pandas) --
def to_blank(v: Any) -> Any:
    """ClickHouse/pandas value -> interpreter value: None for BLANK, naive UTC Timestamp for dates/times."""
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(v, (dt.datetime, dt.date, pd.Timestamp)):
        t = pd.Timestamp(v)
        return t.tz_convert("UTC").tz_localize(None) if t.tzinfo else t
    if isinstance(v, Decimal):
        return float(v)
    if hasattr(v, "item"):
        return v.item()
    return v


@pytest.fixture(scope="module")
def model_data(model, reader, known_data) -> dict[str, pd.DataFrame]:
    """What an import refresh loads: each ODBC table through its own SQL as bi_reader, the mapping table from
    its M rows, the measures table's one row."""
    data = {}
    for table, sql in odbc_tables(model).items():
        r = reader.query(sql)
        data[table] = pd.DataFrame([[to_blank(v) for v in row] for row in r.result_rows],
                                   columns=list(r.column_names), dtype=object)
    data["store_managers"] = pd.DataFrame(store_manager_rows(model), columns=["user_email", "store_id"], dtype=object)
    data["_Measures"] = pd.DataFrame([["measures"]], columns=["Value"], dtype=object)
    return data


# ======================================================================================= DAX interpreter --
@dataclass
class Tab:
    """A table value: rows (a DataFrame) of ``table`` (for RELATED) — or a one-column list of values."""

    table: str | None
    rows: pd.DataFrame


class Dax:
    """Evaluates the DAX subset the model's measures and RLS filters use, with DAX's semantics: a filter context
    of column filters propagated from dimensions to facts along the model's relationships (single direction;
    a fact row whose key has no dimension row is visible only while the dimension is unfiltered), CALCULATE
    replacing filters of the columns it filters (a date-table filter replacing the whole date table's filters,
    as for a table marked as date table), row context for iterators and RELATED, BLANK propagation."""

    def __init__(self, model: Model, data: dict[str, pd.DataFrame], user: str | None = None):
        self.model, self.data, self.user = model, data, user
        self.measures = {n: e for n, (_, e) in model.measures().items()}
        self.rels = model.relationships
        self.date_table = model.date_table()
        (self.date_col,) = [c.name for c in model.tables[self.date_table].kids("column") if c.props.get("isKey")]
        self.rls: dict[tuple[str, str], set] = {}

    # ------------------------------------------------------------------------------------------- context --
    def apply_role(self, role: str, ctx: dict) -> dict:
        """The role's table filters become filters on those tables' rows (evaluated once, per user)."""
        out = dict(ctx)
        for perm in self.model.roles[role].kids("tablePermission"):
            df = self.data[perm.name]
            keep = [bool(self.ev(perm.value, {}, row=(perm.name, r))) for _, r in df.iterrows()]
            out[(perm.name, "__rows__")] = set(df.index[keep])
        return out

    def visible(self, table: str, ctx: dict) -> pd.DataFrame:
        df = self.data[table]
        mask = pd.Series(True, index=df.index)
        for (t, c), vals in ctx.items():
            if t == table:
                keep = df.index.isin(list(vals)) if c == "__rows__" else df[c].isin(list(vals))
                mask &= pd.Series(keep, index=df.index)
        for r in self.rels:
            (ft, fc), (tt, tc) = r["from"], r["to"]
            if ft == table and any(t == tt for t, _ in ctx):
                keys = set(self.visible(tt, ctx)[tc])
                mask &= df[fc].isin(keys)
        return df[mask]

    # ---------------------------------------------------------------------------------------- evaluation --
    def measure(self, name: str, ctx: dict) -> Any:
        return self.ev(self.measures[name], ctx)

    def ev(self, expr, ctx, row=None, env=None):
        node = parse_dax(expr) if isinstance(expr, str) else expr
        return self._ev(node, ctx, row, env or {})

    def _ev(self, n, ctx, row, env):
        from pbi_parsers.dax import exprs as X

        k = type(n).__name__
        if isinstance(n, X.ParenthesesExpression):
            return self._ev(n.inner_statement, ctx, row, env)
        if isinstance(n, X.LiteralNumberExpression):
            return float(n.value.text)
        if isinstance(n, X.LiteralStringExpression):
            return n.value.text[1:-1].replace('""', '"')
        if isinstance(n, X.AddSubUnaryExpression):
            v = self._ev(n.number, ctx, row, env)
            return None if v is None else (-v if n.operator.text == "-" else v)
        if isinstance(n, X.IdentifierExpression):
            name = n.name.text
            if name in env:
                return env[name]
            if name in self.data:  # an unquoted table name
                return Tab(name, self.visible(name, ctx))
            assert name.upper() in DAX_KEYWORDS, name
            return name.upper()
        if isinstance(n, X.ReturnExpression):
            env = dict(env)
            for var in n.variable_statements:
                env[var.var_name.text] = self._ev(var.statement, ctx, row, env)
            return self._ev(n.ret, ctx, row, env)
        if isinstance(n, X.MeasureExpression):
            name = n.name.text[1:-1]
            if name in self.measures:
                assert row is None, "context transition inside an iterator is not interpreted"
                return self.ev(self.measures[name], ctx)
            assert row is not None, f"[{name}] is no measure"
            return to_blank(row[1][name])
        if isinstance(n, X.ColumnExpression):
            t, c = unquote(n.table.text), n.column.text[1:-1]
            assert row is not None and row[0] == t, f"{t}[{c}] outside a row context of {t}"
            return to_blank(row[1][c])
        if isinstance(n, (X.AddSubExpression, X.DivMulExpression)):
            assert type(n.right) is not type(n), \
                "unparenthesised operator chain: pbi-parsers associates it to the right, DAX to the left"
            a, b = self._ev(n.left, ctx, row, env), self._ev(n.right, ctx, row, env)
            op = n.operator.text
            if op in "+-":
                if a is None and b is None:
                    return None
                if isinstance(a, pd.Timestamp) and isinstance(b, (int, float)):  # datetime +/- days
                    return a + pd.Timedelta(days=b) if op == "+" else a - pd.Timedelta(days=b)
                return (a or 0) + (b or 0) if op == "+" else (a or 0) - (b or 0)
            if a is None or b is None:
                return None if op == "*" or a is None else math.copysign(math.inf, a)
            return a * b if op == "*" else a / b
        if isinstance(n, X.ComparisonExpression):
            a, b = self._ev(n.left, ctx, row, env), self._ev(n.right, ctx, row, env)
            return self.compare(a, n.operator.text, b)
        if isinstance(n, X.InExpression):
            v = self._ev(n.value, ctx, row, env)
            if isinstance(n.array, X.ArrayExpression):
                vals = [self._ev(e, ctx, row, env) for e in n.array.elements]
            else:
                t = self._ev(n.array, ctx, row, env)
                vals = list(t.rows.iloc[:, 0])
            return any(self.compare(v, "=", x) for x in vals)
        if isinstance(n, X.LogicalExpression):
            a, b = self._ev(n.left, ctx, row, env), self._ev(n.right, ctx, row, env)
            return (bool(a) and bool(b)) if n.operator.text == "&&" else (bool(a) or bool(b))
        if isinstance(n, X.TableExpression):
            t = unquote(n.name.text)
            return Tab(t, self.visible(t, ctx))
        if isinstance(n, X.FunctionExpression):
            return self.call("".join(p.text for p in n.name_parts).upper(), n.args, ctx, row, env)
        raise NotImplementedError(k)

    @staticmethod
    def compare(a, op, b):
        if isinstance(a, str) and isinstance(b, str):
            a, b = a.lower(), b.lower()  # DAX compares text case-insensitively
        if a is None:
            a = "" if isinstance(b, str) else 0 if not isinstance(b, pd.Timestamp) else None
        if b is None:
            b = "" if isinstance(a, str) else 0 if not isinstance(a, pd.Timestamp) else None
        if a is None or b is None:
            return op in ("=", "<=", ">=") and a is b
        return {"=": a == b, "==": a == b, "<>": a != b, "<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]

    def column_values(self, arg, ctx) -> tuple[str, str, pd.Series]:
        from pbi_parsers.dax import exprs as X

        assert isinstance(arg, X.ColumnExpression), "aggregations take a column here"
        t, c = unquote(arg.table.text), arg.column.text[1:-1]
        return t, c, self.visible(t, ctx)[c]

    def dates(self, ctx) -> list[pd.Timestamp]:
        return sorted(self.visible(self.date_table, ctx)[self.date_col])

    def all_dates(self) -> list[pd.Timestamp]:
        return sorted(self.data[self.date_table][self.date_col])

    def date_filter(self, dates) -> Tab:
        return Tab("__dates__", pd.DataFrame({self.date_col: sorted(dates)}))

    def call(self, f, args, ctx, row, env):
        ev = lambda a, c=ctx, r=row: self._ev(a, c, r, env)  # noqa: E731
        if f in ("SUM", "AVERAGE", "MAX", "MIN", "MEDIAN", "DISTINCTCOUNT"):
            _, _, s = self.column_values(args[0], ctx)
            vals = [to_blank(v) for v in s]
            nn = [v for v in vals if v is not None]
            if f == "DISTINCTCOUNT":
                return len(set(vals)) or None
            if not nn:
                return None
            if f == "SUM":
                return float(sum(nn))
            if f == "AVERAGE":
                return float(sum(nn)) / len(nn)
            if f == "MAX":
                return max(nn)
            if f == "MIN":
                return min(nn)
            nn.sort()
            mid = len(nn) // 2
            return float(nn[mid]) if len(nn) % 2 else (nn[mid - 1] + nn[mid]) / 2
        if f == "COUNTROWS":
            t = ev(args[0])
            return len(t.rows) or None
        if f == "DIVIDE":
            a, b = ev(args[0]), ev(args[1])
            alt = ev(args[2]) if len(args) > 2 else None
            return alt if not b else (None if a is None else a / b)
        if f in ("BLANK",):
            return None
        if f in ("TRUE", "FALSE"):
            return f == "TRUE"
        if f == "UTCNOW":
            return pd.Timestamp(NOW)
        if f == "USERPRINCIPALNAME":
            return self.user
        if f == "DATEDIFF":
            a, b, unit = ev(args[0]), ev(args[1]), ev(args[2])
            if a is None or b is None:
                return None
            secs = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}[unit]
            floor = lambda t: int(t.timestamp()) // secs  # noqa: E731 (boundaries crossed, as DAX counts)
            return floor(b) - floor(a)
        if f == "FILTER":
            t = ev(args[0])
            keep = [bool(self._ev(args[1], ctx, (t.table, r), env)) for _, r in t.rows.iterrows()]
            return Tab(t.table, t.rows[keep])
        if f == "SUMX":
            t = ev(args[0])
            vals = [self._ev(args[1], ctx, (t.table, r), env) for _, r in t.rows.iterrows()]
            vals = [v for v in vals if v is not None]
            return float(sum(vals)) if vals else None
        if f == "RELATED":
            assert row is not None
            tt, tc_col = unquote(args[0].table.text), args[0].column.text[1:-1]
            (r,) = [r for r in self.rels if r["from"][0] == row[0] and r["to"][0] == tt]
            key = row[1][r["from"][1]]
            dim = self.data[tt]
            hit = dim[dim[r["to"][1]] == key]
            return to_blank(hit.iloc[0][tc_col]) if len(hit) else None
        if f == "VALUES":
            t, c, s = self.column_values(args[0], ctx)
            return Tab(t, pd.DataFrame({c: sorted(set(s), key=str)}))
        if f in ("CALCULATE", "CALCULATETABLE"):
            new = dict(ctx)
            if row is not None and f == "CALCULATE":  # context transition: the row's columns become filters
                assert row[0] in self.data and len(row[1]) == 1, "context transition over VALUES ( column ) only"
                for c, v in row[1].items():
                    new[(row[0], c)] = {v}
            for a in args[1:]:
                new = self.apply_filter(a, new, ctx, row, env)
            return self._ev(args[0], new, None if f == "CALCULATE" else row, env)
        if f == "SAMEPERIODLASTYEAR":
            have = set(self.all_dates())
            return self.date_filter({d - pd.DateOffset(years=1) for d in self.dates(ctx)} & have)
        if f == "DATEADD":
            n, unit = ev(args[1]), ev(args[2])
            assert unit == "DAY"
            have = set(self.all_dates())
            return self.date_filter({d + pd.Timedelta(days=n) for d in self.dates(ctx)} & have)
        if f == "LASTDATE":
            ds = self.dates(ctx)
            return self.date_filter(ds[-1:])
        if f == "DATESINPERIOD":
            start, n, unit = ev(args[1]), ev(args[2]), ev(args[3])
            assert unit == "DAY" and n < 0
            if start is None:
                return self.date_filter([])
            lo = start + pd.Timedelta(days=n + 1)
            return self.date_filter([d for d in self.all_dates() if lo <= d <= start])
        raise NotImplementedError(f)

    def apply_filter(self, a, new, ctx, row, env):
        """One CALCULATE filter argument: a table of dates (time intelligence), ALL ( table ) (removes the filters
        on the table and on the tables that filter it, not a role's), a predicate on one column (replaces that
        column's filter) or KEEPFILTERS ( predicate ) (intersects with it)."""
        from pbi_parsers.dax import exprs as X

        keep_filters = False
        if isinstance(a, X.FunctionExpression):
            f = "".join(p.text for p in a.name_parts).upper()
            if f == "ALL":
                (t,) = [unquote(x.name.text) if isinstance(x, X.TableExpression) else x.name.text for x in a.args]
                up, todo = {t}, [t]
                while todo:
                    cur = todo.pop()
                    for r in self.rels:
                        if r["from"][0] == cur and r["to"][0] not in up:
                            up.add(r["to"][0])
                            todo.append(r["to"][0])
                return {k: v for k, v in new.items() if k[0] not in up or k[1] == "__rows__"}
            if f == "KEEPFILTERS":
                (a,), keep_filters = a.args, True
        if isinstance(a, X.FunctionExpression):
            t = self._ev(a, ctx, row, env)
            assert t.table == "__dates__"
            new = {k: v for k, v in new.items() if k[0] != self.date_table}
            new[(self.date_table, self.date_col)] = set(t.rows[self.date_col])
            return new
        cols = {(unquote(c.table.text), c.column.text[1:-1]) for c in a.find_all(X.ColumnExpression)}
        assert len(cols) == 1, "one column per boolean filter"
        ((t, c),) = cols
        candidates = self.data[t][c].drop_duplicates()
        keep = {v for v in candidates
                if self._ev(a, ctx, (t, pd.Series({c: v})), env)}
        if keep_filters and (t, c) in new:
            keep &= set(new[(t, c)])
        new = {k: v for k, v in new.items() if k != (t, c)}
        new[(t, c)] = keep
        return new


# ================================================================================== SQL twins of measures --
def DIV(a: str, b: str) -> str:
    return f"if(ifNull(({b}), 0) = 0, NULL, ({a}) / ({b}))"


def SUB(a: str, b: str) -> str:
    return f"if(({a}) IS NULL AND ({b}) IS NULL, NULL, ifNull(({a}), 0) - ifNull(({b}), 0))"


def ADD(a: str, b: str) -> str:
    return f"if(({a}) IS NULL AND ({b}) IS NULL, NULL, ifNull(({a}), 0) + ifNull(({b}), 0))"


LAST_DAY = "(SELECT max(date) FROM v_dim_date WHERE <<DATES>>)"
NOW_SQL = f"toDateTime64('{NOW:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"


def agg(table: str, expr: str, extra: str = "1", dates: str | None = None) -> str:
    d = f"|{dates}" if dates else ""
    return f"(SELECT {expr} FROM {table} WHERE <<{table}{d}>> AND ({extra}))"


def sales(expr: str, dates: str | None = None) -> str:
    return agg("v_sales_daily", expr, dates=dates)


#: the last day with inventory in the filter context (a date table of whole calendar years has empty later days)
LAST_INV_KEY = "(SELECT max(date_key) FROM v_fact_inventory WHERE <<v_fact_inventory>>)"
LAST_INV_DAY = f"(SELECT max(date) FROM v_dim_date WHERE date_key = {LAST_INV_KEY})"
#: the newest model version of the demand forecast (the Streamlit page's ml_backtest reads the same)
LATEST_VERSION = ("(SELECT max(model_version) FROM v_model_metrics WHERE <<v_model_metrics>> "
                  "AND model_name = 'demand-forecast')")


def inv_last(expr: str) -> str:
    return agg("v_fact_inventory", expr, f"date_key = {LAST_INV_KEY}")


#: each store's newest window (the store-level windows: a store's SKU windows are part of them)
STORE_LATEST = "(SELECT store_id, max(window_end) AS mx FROM v_live_store_metrics GROUP BY store_id)"


def live(table: str, expr: str) -> str:
    """each store's 24 hours up to its own newest window (dashboard/queries.py: in_store_last_24h), from the
    windows themselves, not the view's flag"""
    return agg(table, expr, f"(store_id, window_start) IN (SELECT w.store_id, w.window_start FROM {table} AS w "
                            f"INNER JOIN {STORE_LATEST} AS a ON w.store_id = a.store_id "
                            f"WHERE w.window_start > a.mx - INTERVAL 24 HOUR)")


def pooled_backtest(metric: str, model: str) -> str:
    """the pooled (horizon 0) backtest value of the latest version"""
    return agg("v_model_metrics", "avgOrNull(value)",
               f"metric = '{metric}' AND model = '{model}' AND model_name = 'demand-forecast' AND horizon = 0 "
               f"AND model_version = {LATEST_VERSION}")


#: every measure's ClickHouse twin, written from its definition (not from the DAX text); ``{{Name}}`` is another
#: twin, ``<<table>>`` the filter context's condition on a table (``<<table|cond>>``: with ``cond`` replacing the
#: context's date filter), ``<<DATES>>`` the context's condition on the date table. BLANK is NULL: SUM and
#: COUNTROWS of nothing are NULL (sumOrNull / nullIf(count(), 0)), DIVIDE by 0 or NULL is NULL.
TWINS: dict[str, str] = {
    "Revenue": sales("sumOrNull(revenue)"),
    "Units Sold": sales("sumOrNull(units_sold)"),
    "Units Returned": sales("sumOrNull(units_returned)"),
    "Net Units": sales("sumOrNull(net_units)"),
    "POS Lines": sales("sumOrNull(pos_lines)"),
    "Return Rate": DIV("{{Units Returned}}", "{{Units Sold}}"),
    "Average Selling Price": DIV("{{Revenue}}", "{{Net Units}}"),
    "Cost of Goods Sold": sales("sumOrNull(cost)"),
    "Gross Profit": sales("sumOrNull(profit)"),
    "Gross Margin %": DIV("{{Gross Profit}}", sales("sumOrNull(revenue_with_cost)")),
    "Revenue LY": sales("sumOrNull(revenue)",
                        dates="date IN (SELECT addYears(date, -1) FROM v_dim_date WHERE <<DATES>>)"),
    "Revenue YoY %": DIV(SUB("{{Revenue}}", "{{Revenue LY}}"), "{{Revenue LY}}"),
    "Revenue Previous Week": sales("sumOrNull(revenue)",
                                   dates="date IN (SELECT addDays(date, -7) FROM v_dim_date WHERE <<DATES>>)"),
    "Revenue WoW %": DIV(SUB("{{Revenue}}", "{{Revenue Previous Week}}"), "{{Revenue Previous Week}}"),
    "Revenue per Store": DIV("{{Revenue}}", sales("nullIf(uniqExact(store_key), 0)")),
    "Closing Stock": inv_last("sumOrNull(closing_stock)"),
    "Stock Value at Cost": f"(SELECT sumOrNull(i.closing_stock * p.unit_cost) FROM (SELECT * FROM v_fact_inventory "
                           f"WHERE <<v_fact_inventory>> AND date_key = {LAST_INV_KEY}) AS i LEFT JOIN v_dim_product AS p "
                           f"ON i.product_key = p.product_key)",
    "Stock-out Rate": DIV(agg("v_fact_inventory", "sumOrNull(is_stockout)"),
                          agg("v_fact_inventory", "nullIf(count(), 0)")),
    "SKUs Out of Stock": inv_last("sumOrNull(is_stockout)"),
    "SKUs Below Reorder Point": inv_last("sumOrNull(below_reorder_point)"),
    "Days of Cover": DIV("{{Closing Stock}}", agg(
        "v_fact_inventory", "sumOrNull(units_sold)",
        dates=f"date BETWEEN {LAST_INV_DAY} - 27 AND {LAST_INV_DAY}") + " / 28"),
    "Safety Stock": inv_last("sumOrNull(safety_stock)"),
    "Live Revenue": live("v_live_store_metrics", "sumOrNull(revenue)"),
    "Live Units Sold": live("v_live_store_metrics", "sumOrNull(units_sold)"),
    "Live Transactions": live("v_live_store_metrics", "sumOrNull(transaction_count)"),
    "Live Sales Velocity": live("v_live_store_metrics", "avgOrNull(sales_velocity)"),
    "Latest Window": agg("v_live_store_metrics", "maxOrNull(window_start)"),
    "Minutes Since Last Window": f"dateDiff('minute', (SELECT minOrNull(mx) FROM {STORE_LATEST} WHERE store_id IN "
                                 f"(SELECT store_id FROM v_live_store_metrics WHERE <<v_live_store_metrics>>)), "
                                 f"{NOW_SQL})",
    "Anomalous Windows": live("v_live_sku_metrics", "sumOrNull(is_anomaly)"),
    "SKUs at High Risk": agg("v_current_inventory", "nullIf(countIf(stockout_risk = 'HIGH'), 0)"),
    "SKUs Out of Stock Now": agg("v_current_inventory", "sumOrNull(is_stockout)"),
    "Hours of Cover (median)": agg("v_current_inventory", "quantileExactInclusiveOrNull(0.5)(hours_of_cover)"),
    "Restock Alerts": agg("v_restock_alerts", "nullIf(count(), 0)"),
    "Critical Alerts": agg("v_restock_alerts", "nullIf(countIf(priority IN ('CRITICAL', 'HIGH')), 0)"),
    "Quarantined Events": agg("v_quarantine_summary", "sumOrNull(events)", "NOT startsWith(topic, 'refused:')"),
    "Rows Refused by ClickHouse": agg("v_quarantine_summary", "sumOrNull(events)", "startsWith(topic, 'refused:')"),
    "Quarantine Rate": DIV("{{Quarantined Events}}", ADD("{{Quarantined Events}}", agg(
        "v_live_store_metrics", "sumOrNull(transaction_count)"))),
    "WAPE": DIV(agg("v_forecast_accuracy", "sumOrNull(abs_error_units)"),
                agg("v_forecast_accuracy", "sumOrNull(actual_units)")),
    "Forecast Bias": DIV(agg("v_forecast_accuracy", "sumOrNull(error_units)"),
                         agg("v_forecast_accuracy", "sumOrNull(actual_units)")),
    "MAE": agg("v_forecast_accuracy", "avgOrNull(abs_error_units)"),
    "Forecast Accuracy": SUB("1", "{{WAPE}}"),
    "Interval Coverage 80%": agg("v_forecast_accuracy", "avgOrNull(within_80)"),
    "Interval Coverage 95%": agg("v_forecast_accuracy", "avgOrNull(within_95)"),
    "Forecast Units Next 7 Days": agg("v_forecast_latest", "sumOrNull(yhat)", "horizon BETWEEN 1 AND 7"),
    "Actual Units": agg("v_demand_history", "sumOrNull(units)"),
    "Stream Input Rows": agg("v_stream_batches", "sumOrNull(input_rows)"),
    "Last Stream Batch": agg("v_stream_batches", "maxOrNull(committed_at)"),
    "Stream Records Expired": agg("v_stream_health_latest", "maxOrNull(records_expired)"),
    "Stream Duplicates Dropped": agg("v_stream_batches", "sumOrNull(duplicates_dropped)"),
    "Stream Late Rows Dropped": agg("v_stream_health_latest", "sumOrNull(late_rows_dropped)"),
    "Minutes Since Last Stream Batch": f"dateDiff('minute', (SELECT minOrNull(last_committed_at) FROM "
                                       f"v_stream_health_latest WHERE <<v_stream_health_latest>>), {NOW_SQL})",
    "Kafka Offsets Reached": "(SELECT sumOrNull(m) FROM (SELECT topic, max(offsets_reached) AS m FROM "
                             "v_stream_offsets_latest WHERE <<v_stream_offsets_latest>> GROUP BY topic))",
    "Stream Rows Set Aside": agg("v_stream_health_latest", "sumOrNull(rows_set_aside)"),
    "Backtest WAPE GBT": pooled_backtest("wape", "gbt"),
    "Backtest WAPE Seasonal Naive": pooled_backtest("wape", "seasonal_naive"),
    "WAPE Improvement vs Naive": SUB("1", DIV("{{Backtest WAPE GBT}}", "{{Backtest WAPE Seasonal Naive}}")),
    "Backtest RMSSE GBT": pooled_backtest("rmsse", "gbt"),
    "Backtest Bias GBT": pooled_backtest("bias", "gbt"),
    "Backtest Value by Horizon": agg("v_model_metrics", "avgOrNull(value)",
                                     f"horizon > 0 AND model_name = 'demand-forecast' AND model_version = {LATEST_VERSION}"),
    "Champion Version": agg("v_model_registry", "maxOrNull(version)", "is_champion = 1"),
    "SKUs Needing Reorder": agg("v_reorder_latest", "sumOrNull(reorder_needed)"),
    "Recommended Reorder Units": agg("v_reorder_latest", "sumOrNull(reorder_qty)"),
    "Recommended Reorder Value": agg("v_reorder_latest", "sumOrNull(reorder_value)"),
    "Recommended Safety Stock": agg("v_reorder_latest", "sumOrNull(safety_stock)"),
    "SKUs at Stock-out Risk (forecast)": agg("v_reorder_latest", "nullIf(countIf(stockout_risk = 'HIGH'), 0)"),
    "Median Days Until Stock-out": agg("v_reorder_latest", "quantileExactInclusiveOrNull(0.5)(days_until_stockout)"),
    "Slow-moving SKU Share": DIV(agg("v_sku_classification_latest", "sumOrNull(is_slow_moving)"),
                                 agg("v_sku_classification_latest", "nullIf(count(), 0)")),
    # the latest run (run_label of the latest row by (started_at, finished_at): argMax(run_label, started_at) picked
    # any label of a tie), each day's current row of it, the worst status
    "Last ETL Status": agg("v_etl_runs", "argMaxOrNull(status, status_rank)",
                           "is_day_latest = 1 AND run_label = (SELECT argMax(run_label, (started_at, finished_at)) "
                           "FROM v_etl_runs WHERE <<v_etl_runs>>)"),
    "Failed ETL Runs": agg("v_etl_runs", "nullIf(countIf(status = 'failed'), 0)"),
}


def sql_literal(v: Any) -> str:
    if isinstance(v, pd.Timestamp):
        return f"toDate('{v:%Y-%m-%d}')" if v == v.normalize() else f"toDateTime64('{v}', 3, 'UTC')"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(v)


class Twin:
    """Renders a twin for a filter context: the context's column filters, propagated along the model's
    relationships like the interpreter does, as SQL conditions; role filters as the rows they kept."""

    def __init__(self, model: Model, data: dict[str, pd.DataFrame], ctx: dict):
        self.model, self.data, self.ctx = model, data, ctx

    def table_cond(self, table: str, date_override: str | None = None) -> str:
        conds = []
        for (t, c), vals in self.ctx.items():
            if t == table:
                conds.append(self.in_list(table, c, vals))
        for r in self.model.relationships:
            (ft, fc), (tt, tc) = r["from"], r["to"]
            if ft != table:
                continue
            if tt == "v_dim_date" and date_override is not None:
                conds.append(f"{fc} IN (SELECT {tc} FROM v_dim_date WHERE {date_override})")
            elif any(t == tt for t, _ in self.ctx):
                conds.append(f"{fc} IN (SELECT {tc} FROM {tt} WHERE {self.table_cond(tt)})")
        return " AND ".join(conds) or "1"

    def in_list(self, table: str, col: str, vals) -> str:
        if col == "__rows__":  # a role's filter: the key values of the rows it kept
            keycol = "store_id" if table == "v_dim_store" else next(iter(self.data[table].columns))
            vals, col = set(self.data[table].loc[list(vals), keycol]), keycol
        if not vals:
            return "0"
        return f"{col} IN ({', '.join(sql_literal(v) for v in sorted(vals, key=str))})"

    def render(self, name: str) -> str:
        sql = TWINS[name]
        while "{{" in sql:
            sql = re.sub(r"\{\{([^}]+)\}\}", lambda m: "(" + TWINS[m.group(1)] + ")", sql)
        sql = sql.replace("<<DATES>>", self.table_cond("v_dim_date"))
        while "<<" in sql:
            sql = re.sub(r"<<(\w+)(?:\|([^<>]*))?>>",
                         lambda m: self.table_cond(m.group(1), m.group(2)), sql)
            sql = sql.replace("<<DATES>>", self.table_cond("v_dim_date"))
        return f"SELECT {sql}"


def same(a: Any, b: Any) -> bool:
    a, b = to_blank(a), to_blank(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def contexts(model: Model, data: dict[str, pd.DataFrame]) -> dict[str, tuple[dict, str | None]]:
    week = [pd.Timestamp(dt.date(2026, 1, 15) + dt.timedelta(days=i)) for i in range(7)]
    user, store = store_manager_rows(model)[1]
    return {
        "whole model": ({}, None),
        "S002, 15-21 Jan 2026": ({("v_dim_date", "date"): set(week), ("v_dim_store", "store_id"): {"S002"}}, None),
        f"role Store Manager as {user}": ({}, user),
    }


def test_every_measure_has_a_sql_twin(model):
    assert set(TWINS) == set(model.measures())


@pytest.mark.integration
@pytest.mark.parametrize("context", ["whole model", "S002, 15-21 Jan 2026", "role Store Manager"])
def test_dax_measures_agree_with_their_sql_twins(model, model_data, reader, context):
    (label, (ctx, user)), = [(k, v) for k, v in contexts(model, model_data).items() if k.startswith(context)]
    engine = Dax(model, model_data, user=user)
    if user:
        ctx = engine.apply_role("Store Manager", ctx)
        kept = set(model_data["v_dim_store"].loc[list(ctx[("v_dim_store", "__rows__")]), "store_id"])
        assert kept == {s for u, s in store_manager_rows(model) if u == user}, "the role keeps the user's store"
    twin = Twin(model, model_data, ctx)
    diffs, values = [], {}
    for name in sorted(TWINS):
        got = engine.measure(name, ctx)
        sql = twin.render(name)
        want = reader.query(sql).result_rows[0][0]
        values[name] = got
        if not same(got, want):
            diffs.append(f"[{name}] DAX {got!r} != SQL {to_blank(want)!r}\n    {sql}")
    assert not diffs, f"{label}:\n" + "\n".join(diffs)
    blank = sorted(n for n, v in values.items() if v is None)
    assert len(blank) <= 3, f"{label}: the known dataset leaves too many measures BLANK: {blank}"


@pytest.mark.integration
def test_stream_measures_count_each_kafka_record_once_and_agree_with_the_dashboard(model, model_data, engine, writer,
                                                                                   reader):
    """Both streaming queries read the sales and inventory topics (streaming/job.py ``_query_topics``: raw every
    topic, windows these two), so a Kafka record deleted there is counted by each and their offsets overlap.
    Kafka Offsets Reached = per topic the furthest query, summed; Stream Records Expired = the larger query's
    count, as the Streamlit Stream health card; Stream Rows Set Aside = every query's (they write different
    tables). Expected values from pandas over stream_batches' rows (each batch once, its latest row), not SQL."""
    from dashboard import queries as Q

    _, db = engine
    raw = writer.query_df("SELECT query, batch_id, committed_at, records_expired, rows_set_aside, end_offsets "
                          "FROM stream_batches")
    once = raw.sort_values("committed_at", kind="stable").groupby(["query", "batch_id"]).tail(1)
    reached: dict[str, dict[str, int]] = {}
    for qn, g in once[once["end_offsets"] != ""].groupby("query"):
        last = g.sort_values("committed_at").iloc[-1]
        reached[qn] = {t: sum(parts.values()) for t, parts in json.loads(last["end_offsets"]).items()}
    topics = {t for r in reached.values() for t in r}
    shared = set(reached["raw"]) & set(reached["windows"])
    assert shared == {"retail-sales", "retail-inventory"} and topics > shared   # the data has the overlap
    want_offsets = sum(max(r.get(t, 0) for r in reached.values()) for t in topics)
    expired = once.groupby("query")["records_expired"].sum()
    assert (expired > 0).all(), "both queries counted the deleted records"
    engine_ = Dax(model, model_data)
    assert engine_.measure("Kafka Offsets Reached", {}) == want_offsets
    assert engine_.measure("Stream Records Expired", {}) == expired.max()
    assert engine_.measure("Stream Rows Set Aside", {}) == once["rows_set_aside"].sum() > 0
    # per query (the report's per-query table): that query's own figures
    for qn in ("raw", "windows"):
        ctx = {("v_stream_offsets_latest", "query"): {qn}, ("v_stream_health_latest", "query"): {qn}}
        assert engine_.measure("Kafka Offsets Reached", ctx) == sum(reached[qn].values())
        assert engine_.measure("Stream Records Expired", ctx) == expired[qn]
    # the Streamlit Stream health page's card over the dashboard's own query
    latest = Q.run(reader, db, "health_latest")
    assert engine_.measure("Stream Records Expired", {}) == latest["records_expired"].max()


@pytest.mark.integration
def test_store_manager_sees_only_their_store(model, model_data, reader):
    user, store = store_manager_rows(model)[0]
    engine = Dax(model, model_data, user=user)
    ctx = engine.apply_role("Store Manager", {})
    assert set(engine.visible("v_dim_store", ctx)["store_id"]) == {store}
    assert set(engine.visible("v_live_sku_metrics", ctx)["store_id"]) == {store}
    keys = set(engine.visible("v_sales_daily", ctx)["store_key"])
    assert keys == set(model_data["v_dim_store"].query("store_id == @store")["store_key"])
    nobody = Dax(model, model_data, user="someone.else@example.com")
    assert nobody.visible("v_dim_store", nobody.apply_role("Store Manager", {})).empty
    revenue = reader.query("SELECT sum(revenue) FROM v_sales_daily WHERE store_key IN "
                           f"(SELECT store_key FROM v_dim_store WHERE store_id = '{store}')").result_rows[0][0]
    assert same(engine.measure("Revenue", ctx), revenue)


def test_interpreter_refuses_right_associated_chains(model):
    """pbi-parsers reads ``1 - 2 + 3`` as ``1 - (2 + 3)``: the interpreter refuses rather than answer -4."""
    engine = Dax(model, {})
    assert engine.ev("1 - ( 2 + 3 )", {}) == -4
    with pytest.raises(AssertionError, match="associates"):
        engine.ev("1 - 2 + 3", {})


# ======================================================================== mends found by review (h3) --
def test_tmdl_parser_refuses_a_flag_without_an_owning_object():
    """Flags indented under a one-line property (``defaultPowerBIDataSourceVersion: powerBI_V3``) belong to
    nothing: Desktop writes them under a ``dataAccessOptions`` block."""
    bad = ("model Model\n\tculture: en-US\n\tdefaultPowerBIDataSourceVersion: powerBI_V3\n"
           "\t\tlegacyRedirects\n\t\treturnErrorValuesAsNull\n")
    with pytest.raises(AssertionError, match="no owning object"):
        parse_tmdl(bad)
    (m,) = parse_tmdl(bad.replace("powerBI_V3\n", "powerBI_V3\n\tdataAccessOptions\n"))
    (opts,) = m.kids("dataAccessOptions")
    assert opts.props == {"legacyRedirects": True, "returnErrorValuesAsNull": True}


def test_model_keeps_its_data_access_options_in_their_block(model):
    (opts,) = model.model.kids("dataAccessOptions")
    assert opts.props == {"legacyRedirects": True, "returnErrorValuesAsNull": True}
    assert model.model.props["defaultPowerBIDataSourceVersion"] == "powerBI_V3"
    assert "legacyRedirects" not in model.model.props


def test_docs_state_the_number_of_measures(model):
    n = len(model.measures())
    # the README's Power BI summary and its full section in docs/dashboards.md state the count too
    for doc in (PBI / "README.md", REPO / "README.md", REPO / "docs" / "dashboards.md"):
        counts = [int(x) for x in re.findall(r"(\d+) (?:DAX )?measures", doc.read_text())]
        assert counts and set(counts) == {n}, (doc.name, counts, n)


def calendar_years(data: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """the model's data with v_dim_date holding whole calendar years, as etl.star_schema.calendar_days writes"""
    dd = data["v_dim_date"]
    have = set(dd["date"])
    extra = []
    for year in sorted({d.year for d in have}):
        for d in pd.date_range(f"{year}-01-01", f"{year}-12-31"):
            if d not in have:
                r = dd.iloc[0].copy()
                r["date"], r["date_key"] = d, dkey(d.date())
                extra.append(r)
    out = dict(data)
    out["v_dim_date"] = pd.concat([dd, pd.DataFrame(extra)], ignore_index=True)
    return out


@pytest.mark.integration
def test_last_day_measures_use_the_last_day_with_inventory(model, model_data):
    """No date slicer on a calendar of whole years: the last date (31 Dec) has no inventory; the stock cards show
    the last loaded day's figures, and a slicer ending on a loaded day shows that day's."""
    data = calendar_years(model_data)
    inv = data["v_fact_inventory"]
    engine = Dax(model, data)
    days = lambda lo, hi: {d for d in data["v_dim_date"]["date"] if lo <= d <= hi}  # noqa: E731
    for ctx in ({}, {("v_dim_date", "date"): days(pd.Timestamp(2026, 1, 10), pd.Timestamp(2026, 1, 15))},
                {("v_dim_date", "date"): days(pd.Timestamp(2026, 1, 10), pd.Timestamp(2026, 3, 31))}):
        keys = set(engine.visible("v_fact_inventory", ctx)["date_key"])
        last = max(keys)
        on_last = inv[inv["date_key"] == last]
        last_day = pd.Timestamp(dt.datetime.strptime(str(last), "%Y%m%d"))
        window = {dkey((last_day - pd.Timedelta(days=k)).date()) for k in range(28)}
        sold28 = float(inv[inv["date_key"].isin(window)]["units_sold"].sum())
        closing = float(on_last["closing_stock"].sum())
        assert engine.measure("Closing Stock", ctx) == closing, ctx.keys()
        assert engine.measure("SKUs Below Reorder Point", ctx) == float(on_last["below_reorder_point"].sum())
        assert engine.measure("SKUs Out of Stock", ctx) == float(on_last["is_stockout"].sum())
        assert same(engine.measure("Days of Cover", ctx), closing / (sold28 / 28))
    assert engine.measure("Closing Stock", {}) is not None and last == 20260121


@pytest.mark.integration
def test_last_etl_status_is_the_worst_current_status_of_the_latest_night(model, model_data, reader):
    """Every row of a night carries its load's started_at; 'Last ETL Status' took MAX ( status ) of the rows at the
    latest started_at, and 'success' > 'failed' > 'begun' as text: the latest night (n4: 01-13 re-checked and
    reconciled, its own day 01-20 failed) showed 'success' (old DAX and twin). Now the worst current status
    (failed > begun > success) of the days the latest run wrote: 'failed'. A night whose first attempt failed and whose
    retry succeeded is 'success' (the failed row is no longer its day's latest); a reload stopped half-way is 'begun'."""
    engine = Dax(model, model_data)
    assert engine.measure("Last ETL Status", {}) == "failed"   # old code: 'success'
    assert reader.query(Twin(model, model_data, {}).render("Last ETL Status")).result_rows[0][0] == "failed"

    def status_with(rows: list[tuple]) -> str:
        """The measure over the imported v_etl_runs plus ``rows`` (date_key, started_at, finished_at, status,
        dag_run_id[, run_label: default dag_run_id]), is_day_latest recomputed in pandas over the listed rows (a
        hidden 'begun' is never the latest)."""
        cols = ["date_key", "started_at", "finished_at", "status", "dag_run_id", "run_label"]
        add = pd.DataFrame([r if len(r) == 6 else (*r, r[4]) for r in rows], columns=cols, dtype=object)
        add["status_rank"] = add["status"].map({"success": 0, "begun": 1, "failed": 2})
        runs = pd.concat([model_data["v_etl_runs"], add], ignore_index=True)
        order = runs.sort_values(["started_at", "finished_at"], kind="stable")
        latest = set(order.groupby("date_key").tail(1).index)
        runs["is_day_latest"] = [int(i in latest) for i in runs.index]
        return Dax(model, {**model_data, "v_etl_runs": runs}).measure("Last ETL Status", {})

    s1, s2 = pd.Timestamp(2026, 1, 22, 8, 0), pd.Timestamp(2026, 1, 22, 8, 30)
    retried = [(20260121, s1, s1 + pd.Timedelta(minutes=3), "failed", "n5"),   # attempt 1's load failed
               (20260121, s2, s2 + pd.Timedelta(minutes=9), "success", "n5")]  # the retry reconciled it
    assert status_with(retried) == "success"
    stopped = retried + [(20260121, pd.Timestamp(2026, 1, 22, 10, 0), pd.Timestamp(2026, 1, 22, 10, 1), "begun",
                          "manual__reload")]
    assert status_with(stopped) == "begun"
    # night n6 wrote only its own day 01-22: its check failed, then a quality check by hand (dag_run_id '') passed,
    # recorded under the load's started_at (unattended_start) and finished later: the day's current row. Migration
    # 099 labelled it with its started_at as text; the old DAX took MAX ( run_label ) at the latest started_at,
    # 'n6' > '2026-01-23 ...', and no row of 'n6' was its day's latest: BLANK. Now the label of the latest row by
    # (started_at, finished_at): 'success'; and 104 labels the by-hand row 'n6' (the load it checks): 'success'
    s6 = pd.Timestamp(2026, 1, 23, 8, 0)
    n6 = [(20260122, s6, s6 + pd.Timedelta(minutes=3), "failed", "n6")]
    assert status_with([*n6, (20260122, s6, s6 + pd.Timedelta(hours=2), "success", "", "2026-01-23 08:00:00.000")]
                       ) == "success"   # old code: None
    assert status_with([*n6, (20260122, s6, s6 + pd.Timedelta(hours=2), "success", "", "n6")]) == "success"


@pytest.mark.integration
def test_backtest_measures_read_the_pooled_value_of_the_latest_version(model, model_data):
    """Two model versions with horizons 0 (pooled) and 1..7: the cards show the latest version's horizon-0 value,
    the chart by horizon the latest version's value of that horizon (never horizon 0)."""
    mm = model_data["v_model_metrics"]
    assert set(mm.query("model_name == 'demand-forecast'")["model_version"]) == {1, 2}
    engine = Dax(model, model_data)
    for name, metric, kind in (("Backtest WAPE GBT", "wape", "gbt"), ("Backtest WAPE Seasonal Naive", "wape",
                                                                      "seasonal_naive"),
                               ("Backtest RMSSE GBT", "rmsse", "gbt"), ("Backtest Bias GBT", "bias", "gbt")):
        assert same(engine.measure(name, {}), pooled_value(2, kind, metric)), name
    assert same(engine.measure("WAPE Improvement vs Naive", {}),
                1 - pooled_value(2, "gbt", "wape") / pooled_value(2, "seasonal_naive", "wape"))
    for h in (1, 4, 7):
        ctx = {("v_model_metrics", "horizon"): {h}, ("v_model_metrics", "model"): {"gbt"},
               ("v_model_metrics", "metric"): {"wape"}}
        (want,) = mm.query("model_name == 'demand-forecast' and model_version == 2 and horizon == @h "
                           "and model == 'gbt' and metric == 'wape'")["value"]
        assert same(engine.measure("Backtest Value by Horizon", ctx), want)
    assert engine.measure("Backtest Value by Horizon", {("v_model_metrics", "horizon"): {0}}) is None


@pytest.mark.integration
def test_live_measures_cover_the_24_hours_of_the_streamlit_dashboard(model, model_data, reader, engine):
    """With an earlier day of windows loaded, Live Revenue / Units / Transactions of a store equal the Streamlit
    dashboard's 24-hour figures (dashboard.queries exec_live); a line chart's point of the earlier day is blank."""
    from dashboard import queries as Q

    ls = model_data["v_live_store_metrics"]
    assert ls["window_start"].min() < ls["window_start"].max() - pd.Timedelta(hours=24), "an earlier day is loaded"
    dax = Dax(model, model_data)
    for store in ("S001", "S003", ""):
        ctx = {("v_dim_store", "store_id"): {store}} if store else {}
        want = Q.run(reader, engine[1], "exec_live", Q.Filters(store=store)).iloc[0]
        assert same(dax.measure("Live Revenue", ctx), float(want["revenue"])), store
        assert same(dax.measure("Live Units Sold", ctx), float(want["units"])), store
        assert same(dax.measure("Live Transactions", ctx), float(want["transactions"])), store
        everything = float(dax.visible("v_live_store_metrics", ctx)["revenue"].sum())
        assert dax.measure("Live Revenue", ctx) < everything
    early, late = ls["window_start"].min(), ls["window_start"].max()
    assert dax.measure("Live Revenue", {("v_live_store_metrics", "window_start"): {early}}) is None
    assert same(dax.measure("Live Revenue", {("v_live_store_metrics", "window_start"): {late}}),
                float(ls[ls["window_start"] == late]["revenue"].sum()))
    sku = model_data["v_live_sku_metrics"]
    recent = sku[sku["window_start"] > sku["window_start"].max() - pd.Timedelta(hours=24)]
    assert same(dax.measure("Anomalous Windows", {}), float(recent["is_anomaly"].sum()))
    assert recent["is_anomaly"].sum() < sku["is_anomaly"].sum()


@pytest.mark.integration
def test_forecast_units_next_7_days_sums_horizons_1_to_7(model, model_data):
    fl = model_data["v_forecast_latest"]
    assert fl["horizon"].max() == 14
    want = float(fl[fl["horizon"].between(1, 7)]["yhat"].sum())
    assert same(Dax(model, model_data).measure("Forecast Units Next 7 Days", {}), want)


@pytest.mark.integration
def test_live_measures_take_each_stores_own_last_day_and_show_the_stalest_feed(model, engine):
    """S001 streams up to 09:00 on 22 January (NOW 09:37:30), S002's feed stopped 50 h before. Each store's Live
    Revenue / Units / Transactions are its own 24 hours up to its newest window (the chain's the sum of both) and
    Minutes Since Last Window the stalest store's age in the filter context, from its newest window's end (as the
    dashboard; it took the start, 5 minutes more): before, they anchored on the newest
    window of all stores, so S002's live figures were BLANK and the chain's card showed S001's 37 minutes."""
    from core.clickhouse import migrate, new_client

    s, _ = engine
    db = f"pbi_live_{uuid.uuid4().hex[:6]}"
    migrate(s, database=db)
    c = new_client(s, db)
    try:
        rows = []
        for store, last in (("S001", dt.datetime(2026, 1, 22, 9, 0)), ("S002", dt.datetime(2026, 1, 20, 7, 0))):
            for h in range(30):   # hourly windows, 30 h back from the store's newest
                ws = (last - dt.timedelta(hours=h)).replace(tzinfo=UTC)
                rows.append([ws, ws + dt.timedelta(minutes=5), store, h + 1, 0, 10.0 * (h + 1), h + 2, 1, 0, 1.0 + h,
                             0.0, 1, 1, dt.datetime.now(UTC)])
        c.insert("store_metrics_5m", rows, column_names=[
            "window_start", "window_end", "store_id", "units_sold", "units_returned", "revenue", "transaction_count",
            "sku_count", "skus_high_risk", "sales_velocity", "anomaly_score", "batch_id", "version", "updated_at"])
        data = {}
        for table, sql in odbc_tables(model).items():
            r = c.query(sql)
            data[table] = pd.DataFrame([[to_blank(v) for v in row] for row in r.result_rows],
                                       columns=list(r.column_names), dtype=object)
        data["store_managers"] = pd.DataFrame(store_manager_rows(model), columns=["user_email", "store_id"],
                                              dtype=object)
        data["_Measures"] = pd.DataFrame([["measures"]], columns=["Value"], dtype=object)
        dax = Dax(model, data)
        f = pd.DataFrame(rows, columns=["ws", "we", "store", "units", "ret", "revenue", "tx", "skus", "high", "v",
                                        "z", "b", "ver", "upd"])
        f["ws"] = pd.to_datetime(f["ws"]).dt.tz_localize(None)
        f["we"] = pd.to_datetime(f["we"]).dt.tz_localize(None)
        newest = f.groupby("store")["ws"].transform("max")
        day = f[f["ws"] > newest - pd.Timedelta(hours=24)]
        now_min = pd.Timestamp(NOW).floor("min")
        for store in ("S001", "S002", None):
            ctx = {("v_live_store_metrics", "store_id"): {store}} if store else {}
            mine = day if store is None else day[day["store"] == store]
            assert len(mine) == (48 if store is None else 24)
            assert same(dax.measure("Live Revenue", ctx), float(mine["revenue"].sum())), store
            assert same(dax.measure("Live Units Sold", ctx), float(mine["units"].sum())), store
            assert same(dax.measure("Live Transactions", ctx), float(mine["tx"].sum())), store
            assert same(dax.measure("Live Sales Velocity", ctx), float(mine["v"].mean())), store
            stalest = (f if store is None else f[f["store"] == store]).groupby("store")["we"].max().min()
            assert dax.measure("Minutes Since Last Window", ctx) == int((now_min - stalest).total_seconds() // 60)
        # S002's newest window ends 20 Jan 07:05: 50 h 32 min, as the dashboard's stalest_window_end (it said
        # 50 h 37 min, from that window's start)
        assert dax.measure("Minutes Since Last Window", {}) == 3032
    finally:
        c.command(f"DROP DATABASE IF EXISTS {db}")
        c.close()
