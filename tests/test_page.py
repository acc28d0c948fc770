"""The query page's assets (genoray/serving/page.py): served by the API app with the strict CSP,
no inline script or event handler in the HTML, every request of the script relative to the
page's own address (same origin), and shipped as package data. The browser test is
tests/test_page_browser.py."""

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genoray.serving.page import ASSETS, CSP, asset_bytes
from genoray.serving.service import create_app, hash_key

ROOT = Path(__file__).resolve().parents[1]
PAGE_DIR = ROOT / "genoray" / "serving" / "page"


class NoBackend:
    """The page's routes never reach a backend; the API's do (and answer 503 here)."""

    async def predict(self, req):
        raise AssertionError("not called")

    async def info(self):
        return None


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(NoBackend(), key_hashes=(hash_key("k"),)))


def test_csp_is_the_strict_one():
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no host
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("route", sorted(ASSETS))
def test_assets_are_served_with_the_csp(client, route):
    name, media_type = ASSETS[route]
    r = client.get(route)
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"] == media_type
    assert r.content == (PAGE_DIR / name).read_bytes() == asset_bytes(name)


def test_page_is_public_but_the_api_is_not(client):
    assert client.get("/ui").status_code == 200  # static, no data: no key needed
    assert client.get("/v1/info").status_code == 401
    assert client.get("/v1/info", headers={"Authorization": "Bearer k"}).status_code == 503  # no bundle here
    assert "/ui" not in client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()["paths"]  # not an API operation (schemathesis)


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts: list[dict] = []
        self.script_bodies: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True
            self.script_bodies.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_bodies[-1] += data


def test_html_has_no_inline_script_handler_or_style():
    page = _Html()
    page.feed((PAGE_DIR / "index.html").read_text())
    assert [s.get("src") for s in page.scripts] == ["ui/page.js"]
    assert all(not body.strip() for body in page.script_bodies)
    assert not [(t, k) for t, k, _ in page.attrs if k.lower().startswith("on")], "inline event handlers"
    assert not [(t, k) for t, k, _ in page.attrs if k.lower() == "style"], "inline style attributes"
    assert "style" not in page.tags
    urls = [v for _, k, v in page.attrs if k in ("src", "href", "action") and v]
    assert urls == ["data:,", "ui/page.css", "ui/page.js"]  # data:,: no favicon request
    assert all(not re.match(r"^([a-z]+:|/)", u) for u in urls[1:])


def test_script_requests_only_relative_paths():
    js = (PAGE_DIR / "page.js").read_text()
    assert "://" not in js  # no absolute URL anywhere, comments included
    js = re.sub(r"^\s*//.*$|\s// .*$", "", js, flags=re.M)  # code only
    assert "//" not in js  # no protocol-relative URL either
    assert js.count("fetch(") == 1, "every request goes through api()"
    assert re.search(r"function api\(path, options\) \{\s+return fetch\(new URL\(path, BASE\)", js)
    assert 'const BASE = new URL("../", document.currentScript.src);' in js
    calls = re.findall(r"\bapi\(([^,)]*)", js)
    paths = [c for c in calls if c != "path"]
    assert sorted(paths) == ['"v1/info"', '"v1/predict"']  # string literals, relative
    for forbidden in ("eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                      "localStorage", "XMLHttpRequest", "WebSocket", "import("):
        assert forbidden not in js, forbidden
    css = (PAGE_DIR / "page.css").read_text()
    assert "@import" not in css and "url(" not in css


def test_page_files_are_package_data():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["genoray"]
    shipped = {p.name for pat in patterns for p in (ROOT / "genoray").glob(pat)}
    assert {name for name, _ in ASSETS.values()} <= shipped
    assert {p.name for p in PAGE_DIR.iterdir()} == {name for name, _ in ASSETS.values()}
