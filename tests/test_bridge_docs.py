"""The API docs work without internet: every HTML page the bridge serves names only its own origin, and every
file those pages load is served by the bridge itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from flask.testing import FlaskClient

from bridge.app import create_app
from tests.bridge_fixtures import RedisServer, make_settings

ORIGIN = "http://localhost"  # what Flask's test client sends as the Host
ABSOLUTE_URL = re.compile(r"""https?://[^\s"'<>()\\]+""", re.IGNORECASE)
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".html": "text/html"}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> FlaskClient:
    root: Path = tmp_path_factory.mktemp("docs")
    return create_app(make_settings(root, redis_server.url)).test_client()


def html_pages(client: FlaskClient) -> Iterator[tuple[str, str]]:
    """Every HTML page: what a GET of each route without parameters returns as text/html, and the pages those
    name (Swagger UI's OAuth redirect page)."""
    queue = [rule.rule for rule in client.application.url_map.iter_rules()
             if "GET" in (rule.methods or ()) and not rule.arguments]
    seen: set[str] = set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        response = client.get(path)
        if response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            yield path, page
            queue += re.findall(r'"oauth2RedirectUrl": "([^"]+)"', page)


def test_no_page_names_another_origin(client: FlaskClient) -> None:
    pages = dict(html_pages(client))
    assert {"/docs", "/docs/oauth2-redirect.html"} <= set(pages)
    elsewhere = {path: url for path, page in pages.items() for url in ABSOLUTE_URL.findall(page)
                 if not url.startswith(ORIGIN + "/")}
    assert elsewhere == {}


def test_the_docs_load_every_file_from_the_bridge(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    links = _Links()
    links.feed(page.get_data(as_text=True))
    assets = [urljoin(f"{ORIGIN}/docs", link) for link in links.found]
    assert len(assets) >= 4  # Swagger UI's script, its preset, its stylesheet, the icon
    for url in assets:
        assert url.startswith(ORIGIN + "/")
        response = client.get(urlsplit(url).path)
        assert response.status_code == 200, url
        assert response.mimetype == ASSET_TYPES[Path(urlsplit(url).path).suffix], url
    assert '"url": "/openapi.json"' in page.get_data(as_text=True)
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_sends_the_spec_to_no_validator(client: FlaskClient) -> None:
    """Swagger UI's default validator badge is an image from validator.swagger.io, carrying the spec's URL."""
    assert '"validatorUrl": "none"' in client.get("/docs").get_data(as_text=True)


def test_the_docs_may_load_only_from_the_bridge_and_nothing_is_sniffed(client: FlaskClient) -> None:
    policy = client.get("/docs").headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert all(client.get(path).headers["X-Content-Type-Options"] == "nosniff" for path in ("/docs", "/livez"))
