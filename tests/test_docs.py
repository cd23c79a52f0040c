"""The reference in docs/ against the code it describes.

docs/rest-api.md is generated from the admin application's OpenAPI document
(:func:`rest_api_markdown`); regenerate it with::

    REGENERATE_DOCS=1 .venv/bin/python -m pytest tests/test_docs.py

The other pages are written by hand, so these tests hold them to the code
where a drift would mislead a reader: every setting and its default, every
command and option, every public name, links that stay inside the repository
and lead somewhere, Python examples that are whole scripts, and example
events that verify.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

import broadcaster
from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import MAX_BATCH, create_app
from broadcaster.admin.guard import OPEN, permits, required
from broadcaster.cli.parser import build_parser
from broadcaster.core import Broadcaster
from broadcaster.events import Category, EventFactory, parse_frame, seal
from broadcaster.routing import ADAPTER_NAMES
from broadcaster.security import Scope, TokenSet
from broadcaster.settings import Settings, load_settings
from broadcaster.settings.families import ADAPTER_FIELDS, CATEGORY_FIELDS, variable_for
from broadcaster.store.memory import MemoryStore

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REST_API = DOCS / "rest-api.md"
REGENERATE = "REGENERATE_DOCS=1 .venv/bin/python -m pytest tests/test_docs.py"

#: Pages whose Python examples are whole scripts (docs/security.md shows fragments).
SCRIPT_PAGES = ("python-api.md", "deploying.md")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


# -- the REST API page, generated ------------------------------------------------

_METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _method_order(method: str) -> int:
    return _METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER)


# The app's docstrings cite the specification's sections, which are not part
# of this repository; the docs must not.
_CITATION = re.compile(r"\s*\((?:SPEC|issue) \d[^)]*\)")
_MAX_ID = 2**63 - 1

#: What FastAPI's own pages are; they are outside the OpenAPI document and
#: have no docstring of ours (the dashboard, also outside it, has one).
_UNLISTED = {
    "openapi": "The OpenAPI document this page is generated from, as JSON.",
    "swagger_ui_html": "Interactive documentation of this API (Swagger UI).",
    "swagger_ui_redirect": "The OAuth2 redirect page of the interactive documentation.",
    "redoc_html": "Documentation of this API (ReDoc).",
}

_INTRO = """\
The admin API of `broadcaster serve`, at `http://ADMIN_HOST:ADMIN_PORT`
(`https://` with `ADMIN_TLS_CERT` / `ADMIN_TLS_KEY`; see
[configuration](configuration.md)): {description}.

Every route but the open ones needs `Authorization: Bearer <token>`: a
token of `BROADCASTER_ADMIN_TOKEN` or `BROADCASTER_TOKENS` whose scope allows
the route. The gate in front of every route decides before the body is read:

- **401** without a valid token, **403** when the token's scope does not
  allow the route (the body names the token and its scope);
- **413** for a body over `ADMIN_MAX_BODY_BYTES`, unread;
- **404** for an unknown category or sequence id (the body says which) and,
  to a token holder, an unknown path;
- **422** for a request that does not validate, as
  `{{"detail": [{{"field": "<where>", "message": "<why>"}}]}}` (not the
  `HTTPValidationError` shape the OpenAPI document names);
- **503** when the store cannot take or answer the request, or the service
  is stopping: nothing changed, retry later.

Which scope may call what, and why, is in [security](security.md).
"""


#: Constants the app's docstrings name, with their values.
_CONSTANTS = {"``MAX_BATCH``": str(MAX_BATCH)}


def _text(description: str) -> str:
    """A docstring from the document as one markdown paragraph."""
    text = _CITATION.sub("", " ".join(description.split()))
    for name, value in _CONSTANTS.items():
        text = text.replace(name, value)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _number(value: Any) -> str:
    # The document holds 2**63 - 1 as a float in places (9.223372036854776e18).
    if isinstance(value, float) and value == float(_MAX_ID):
        return "2^63-1"
    if isinstance(value, int) and value == _MAX_ID:
        return "2^63-1"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved: Mapping[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    return schema


def _type(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> str:
    """A schema in a few words: its type, values and bounds."""
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(_type(option, doc) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        text = "array of " + _type(schema.get("items", {}), doc)
    elif kind == "object" and "title" in schema and "properties" in schema:
        text = f"`{schema['title']}`"
    elif isinstance(kind, str):
        text = kind
    else:
        text = "JSON"
    bounds = []
    if "minimum" in schema and "maximum" in schema:
        bounds.append(f"{_number(schema['minimum'])} to {_number(schema['maximum'])}")
    elif "minimum" in schema:
        bounds.append(f"at least {_number(schema['minimum'])}")
    elif "maximum" in schema:
        bounds.append(f"at most {_number(schema['maximum'])}")
    if "minLength" in schema and "maxLength" in schema:
        bounds.append(f"{schema['minLength']}-{schema['maxLength']} characters")
    elif "maxLength" in schema:
        bounds.append(f"at most {schema['maxLength']} characters")
    elif "minLength" in schema:
        bounds.append(f"at least {schema['minLength']} characters")
    if "pattern" in schema:
        bounds.append(f"matching `{schema['pattern']}`")
    if "maxItems" in schema:
        bounds.append(f"at most {schema['maxItems']} items")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _objects(
    schema: Mapping[str, Any], doc: Mapping[str, Any], name: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The objects with fields that a body schema is made of, named."""
    schema = _resolve(schema, doc)
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            yield from _objects(option, doc, name)
    elif schema.get("type") == "array":
        yield from _objects(schema.get("items", {}), doc, f"each item of the {name}")
    elif "properties" in schema:
        yield str(schema.get("title", name)), schema


def _fields(title: str, schema: Mapping[str, Any], doc: Mapping[str, Any]) -> list[str]:
    required_fields = set(schema.get("required", ()))
    lines = [
        f"Fields of {title}"
        + (" (no others)" if schema.get("additionalProperties") is False else "")
        + ":",
        "",
        "| field | type | required | notes |",
        "|---|---|---|---|",
    ]
    for field, prop in schema["properties"].items():
        notes = []
        if "description" in prop:
            notes.append(_text(prop["description"]))
        if "default" in prop:
            notes.append(f"default `{json.dumps(prop['default'])}`")
        needed = "yes" if field in required_fields else "no"
        lines.append(
            f"| `{field}` | {_cell(_type(prop, doc))} | {needed} | {_cell('; '.join(notes))} |"
        )
    lines.append("")
    return lines


def _scope(route: str) -> str:
    if required(route) is OPEN:
        return "anyone, no token"
    return ", ".join(f"`{scope.value}`" for scope in Scope if permits(route, scope))


def _first_sentence(text: str) -> str:
    found = re.match(r"(.+?\.)(\s|$)", text)
    return found.group(1) if found else text


def routes(app: FastAPI) -> list[APIRoute | Route]:
    """The application's routes: FastAPI's (the API) and Starlette's (its docs pages)."""
    return [route for route in app.routes if isinstance(route, APIRoute | Route)]


def admin_app() -> FastAPI:
    """The admin application, built as tests/admin builds it: in-memory
    adapters and store; the OpenAPI document does not depend on them."""
    b = Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    return create_app(b, TokenSet.of({"docs": "a-token-only-for-the-docs"}))


def rest_api_markdown(app: FastAPI | None = None) -> str:
    """docs/rest-api.md: every operation of the admin application's OpenAPI
    document, with the scopes its route admits (the access guard's table)."""
    app = app if app is not None else admin_app()
    doc = app.openapi()
    names: dict[tuple[str, str], str] = {}
    unlisted: list[tuple[str, str, str, str]] = []
    for route in routes(app):
        path = route.path
        for method in sorted((route.methods or set()) - {"HEAD"}):
            names[(path, method)] = route.name
            if method.lower() not in doc["paths"].get(path, {}):
                about = _UNLISTED.get(route.name) or _text(route.endpoint.__doc__ or "")
                unlisted.append((path, method, route.name, about))
    operations = sorted(
        (
            (path, method.upper(), operation)
            for path, item in doc["paths"].items()
            for method, operation in item.items()
        ),
        key=lambda op: (op[0], _method_order(op[1])),
    )
    lines = [
        "# REST API",
        "",
        "<!-- Generated from the admin application's OpenAPI document by",
        f"     tests/test_docs.py; do not edit. Regenerate: {REGENERATE} -->",
        "",
        _INTRO.format(description=_text(doc["info"]["description"]).rstrip(".").lower()),
        "## Routes",
        "",
        "| method | path | who may call it | what it does |",
        "|---|---|---|---|",
    ]
    rows = [
        (
            path,
            _method_order(method),
            method,
            names[(path, method)],
            _first_sentence(_text(operation.get("description", operation["summary"]))),
        )
        for path, method, operation in operations
    ]
    rows += [
        (path, _method_order(method), method, name, _first_sentence(about))
        for path, method, name, about in unlisted
    ]
    for path, _, method, name, summary in sorted(rows):
        lines.append(f"| `{method}` | `{path}` | {_scope(name)} | {_cell(summary)} |")
    lines.append("")
    for path, method, operation in operations:
        lines += [f"## `{method} {path}`", ""]
        lines += [_text(operation.get("description", operation["summary"])), ""]
        lines += [f"Who may call it: {_scope(names[(path, method)])}.", ""]
        parameters = operation.get("parameters", [])
        if parameters:
            lines += [
                "| parameter | in | type | required | default | notes |",
                "|---|---|---|---|---|---|",
            ]
            for p in parameters:
                schema = p.get("schema", {})
                default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
                lines.append(
                    f"| `{p['name']}` | {p['in']} | {_cell(_type(schema, doc))}"
                    f" | {'yes' if p.get('required') else 'no'} | {default}"
                    f" | {_cell(_text(p.get('description', '')))} |"
                )
            lines.append("")
        body = operation.get("requestBody")
        if body is not None:
            for media, content in sorted(body["content"].items()):
                schema = content.get("schema", {})
                needed = "required" if body.get("required") else "optional"
                lines += [f"Request body (`{media}`, {needed}): {_type(schema, doc)}.", ""]
                seen: set[str] = set()
                for title, obj in _objects(schema, doc, "list"):
                    if title not in seen:
                        seen.add(title)
                        lines += _fields(f"`{title}`" if " " not in title else title, obj, doc)
        lines += ["Answers:", ""]
        for code, response in sorted(operation.get("responses", {}).items()):
            lines.append(f"- `{code}` {response.get('description', '')}")
            for media, content in sorted(response.get("content", {}).items()):
                props = content.get("schema", {}).get("properties")
                if props:
                    shown = ", ".join(
                        f"`{name}` ({_type(prop, doc)}"
                        + (f": {_text(prop['description'])}" if "description" in prop else "")
                        + ")"
                        for name, prop in props.items()
                    )
                    lines.append(f"  (`{media}`): {shown}")
        lines.append("")
    if unlisted:
        lines += ["## Outside the OpenAPI document", ""]
        for path, method, name, about in sorted(unlisted):
            lines += [f"- `{method} {path}` ({_scope(name)}): {about}"]
        lines.append("")
    return "\n".join(lines)


def test_rest_api_md_is_the_generated_listing() -> None:
    generated = rest_api_markdown()
    assert rest_api_markdown() == generated, "the listing must not change between two builds"
    if os.environ.get("REGENERATE_DOCS") == "1":
        REST_API.write_text(generated, encoding="utf-8")
    current = REST_API.read_text(encoding="utf-8") if REST_API.exists() else ""
    assert current == generated, (
        "docs/rest-api.md differs from the admin application's OpenAPI document;"
        f" regenerate it with: {REGENERATE}"
    )


def test_the_rest_api_listing_names_every_route_with_its_scopes() -> None:
    app = admin_app()
    text = rest_api_markdown(app)
    listed = routes(app)
    assert len(listed) == len(app.routes), "a route that is neither an APIRoute nor a Route"
    for route in listed:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            row = re.search(rf"^\| `{method}` \| `{re.escape(route.path)}` \| (.+?) \|", text, re.M)
            assert row is not None, f"{method} {route.path} is not listed"
            for scope in Scope:
                shown = f"`{scope.value}`" in row.group(1)
                if required(route.name) is OPEN:
                    assert row.group(1) == "anyone, no token"
                else:
                    assert shown == permits(route.name, scope), (method, route.path, scope)


# -- configuration ---------------------------------------------------------------


#: The default of a setting computed at start (INSTANCE_ID: ``<hostname>:<pid>``).
COMPUTED = object()


def setting_variables() -> dict[str, Any]:
    """Every environment variable :class:`Settings` reads, named as
    the settings package names it in its errors, with the default it takes."""
    defaults = Settings(_env_file=None)
    variables: dict[str, Any] = {}
    for field, info in Settings.model_fields.items():
        if field == "categories":
            for cat in Category:
                for name in CATEGORY_FIELDS:
                    value = getattr(defaults.categories[cat], name)
                    variables[variable_for(("categories", cat.value, name))] = value
        elif field == "adapters":
            for adapter in ADAPTER_NAMES:
                for name in ADAPTER_FIELDS:
                    value = getattr(defaults.adapters[adapter], name)
                    variables[variable_for(("adapters", adapter, name))] = value
        else:
            computed = info.default_factory is not None
            variables[variable_for((field,))] = COMPUTED if computed else info.default
    return variables


def _shown(value: Any) -> str:
    """A default as docs/configuration.md writes it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "empty"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _rows(text: str) -> dict[str, str]:
    """The table rows of a page that start with a variable: name -> default cell."""
    rows = {}
    for name, default in re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]*) \|", text, re.M):
        rows[name] = default.strip()
    return rows


def test_configuration_md_lists_every_setting_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = _rows(text)
    for variable, default in setting_variables().items():
        assert variable in rows, f"{variable} has no row in docs/configuration.md"
        expected = "`<hostname>:<pid>`" if default is COMPUTED else _shown(default)
        assert rows[variable] == expected, f"{variable}: default {rows[variable]} != {expected}"


def test_configuration_md_lists_every_variable_of_env_example() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    names = re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M)
    assert len(names) >= len(setting_variables())
    for name in names:
        assert f"`{name}`" in text, f"{name} (.env.example) is not in docs/configuration.md"


# -- command line ----------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, argparse.ArgumentParser] = action.choices
            return choices
    raise AssertionError("the broadcaster parser has no subcommands")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            found += action.option_strings
        elif action.choices:
            found += [str(choice) for choice in action.choices]
    return found


def test_cli_md_covers_every_subcommand_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    for option in _options(parser):
        assert f"`{option}" in text, f"broadcaster {option} is not in docs/cli.md"
    commands = _subcommands(parser)
    assert commands
    for name, sub in commands.items():
        assert re.search(rf"^## `broadcaster {re.escape(name)}`", text, re.M), (
            f"broadcaster {name} has no section in docs/cli.md"
        )
        section = text.split(f"## `broadcaster {name}`", 1)[1].split("\n## ", 1)[0]
        for option in _options(sub):
            assert re.search(rf"`[^`]*{re.escape(option)}\b", section), (
                f"broadcaster {name} {option} is not in its section of docs/cli.md"
            )


# -- links and references ----------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
# A bare URL in prose, which GitHub turns into a link.
_BARE_URL = re.compile(r"(?<![(<])\b(?:https?://|www\.)[^\s)>\]]+")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_FORBIDDEN = re.compile(r"\b(?:SPEC|issue)\s+\d", re.I)


def links(text: str) -> list[str]:
    """Link targets of a markdown page, outside code."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    return (
        _INLINE_LINK.findall(prose)
        + _REFERENCE_LINK.findall(prose)
        + _AUTOLINK.findall(prose)
        + _BARE_URL.findall(_REFERENCE_LINK.sub("", prose))
    )


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors of a page."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_the_docs_have_their_pages() -> None:
    names = {page.name for page in pages()}
    for name in (
        "README.md",
        "configuration.md",
        "cli.md",
        "wire-format.md",
        "rest-api.md",
        "python-api.md",
        "deploying.md",
        "security.md",
        "benchmarks.md",
    ):
        assert name in names


def test_no_link_leaves_the_repository() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for target in links(text):
            assert not _SCHEME.match(target), f"{page.name}: {target} leaves the repository"
            path = target.split("#", 1)[0]
            if path:
                resolved = (page.parent / path).resolve()
                assert resolved.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert "../shared" not in text, f"{page.name} points at ../shared"


def test_no_page_cites_a_spec_section_or_an_issue() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        found = _FORBIDDEN.search(text)
        assert found is None, f"{page.name}: {found.group(0)!r} names what is not in the repository"


def test_every_relative_link_leads_to_a_file_and_heading() -> None:
    checked = 0
    for page in pages():
        for target in links(page.read_text(encoding="utf-8")):
            if _SCHEME.match(target):
                continue  # test_no_link_leaves_the_repository says why
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: {target}: no such file"
            if anchor and resolved.suffix == ".md":
                heads = _anchors(resolved.read_text(encoding="utf-8"))
                assert anchor in heads, f"{page.name}: {target}: no such heading"
            checked += 1
    assert checked, "the docs link nowhere: is the link pattern broken?"


def test_link_checks_see_what_they_must() -> None:
    page = (
        "[a](https://example.com) [b](../../outside.md) [c](ok.md#part)\n"
        "`[not](http://in-code.example)`\n```\n[nor](http://fenced.example)\n```\n"
        "[ref]: http://ref.example\n<https://auto.example>\nSPEC 4, Issue 6\n"
        "see https://bare.example.\n"
    )
    assert links(page) == [
        "https://example.com",
        "../../outside.md",
        "ok.md#part",
        "http://ref.example",
        "https://auto.example",
        "https://bare.example.",
    ]
    assert len(_FORBIDDEN.findall(page)) == 2
    assert _anchors("# The `REST` API\n## Routes\n## Routes\n") == {
        "the-rest-api",
        "routes",
        "routes-1",
    }


# -- Python examples ---------------------------------------------------------------

_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_python_examples_are_whole_scripts() -> None:
    count = 0
    for name in SCRIPT_PAGES:
        for index, code in enumerate(_PYTHON.findall((DOCS / name).read_text(encoding="utf-8"))):
            where = f"docs/{name}, python block {index + 1}"
            compile(code, where, "exec")  # a top-level await or async with fails here
            if "async def main" in code:
                assert code.rstrip().endswith("asyncio.run(main())"), where
            count += 1
    assert count >= 4


def test_the_wire_format_examples_verify() -> None:
    text = (DOCS / "wire-format.md").read_text(encoding="utf-8")
    (code,) = _PYTHON.findall(text)
    example: dict[str, Any] = {"__name__": "wire_format_example"}
    exec(compile(code, "docs/wire-format.md", "exec"), example)
    keys = {"2026-k1": b"a-shared-secret"}
    events = [
        line
        for block in re.findall(r"^```json\n(.*?)^```", text, re.S | re.M)
        for line in block.splitlines()
        if '"sequence_id"' in line and '"payload"' in line
    ]
    assert len(events) == 2
    for line in events:
        parse_frame(line).verify(keys if '"signature"' in line else None)
        event = json.loads(line)
        assert example["checksum_ok"](event), line
        assert example["signature_ok"](event, keys) == ("signature" in event), line
    crc32c = EventFactory(checksums={Category.DEBUG: "crc32c"}).draft("DEBUG", "x", {"é": 1.5})
    assert example["checksum_ok"](json.loads(seal(crc32c, 7).wire))
    tampered = json.loads(events[-1])
    tampered["payload"]["ms"] += 1
    assert not example["checksum_ok"](tampered)
    assert not example["signature_ok"](tampered, keys)


def test_python_api_md_names_every_public_name() -> None:
    text = (DOCS / "python-api.md").read_text(encoding="utf-8")
    for name in broadcaster.__all__:
        assert f"`{name}" in text, f"broadcaster.{name} is not in docs/python-api.md"
