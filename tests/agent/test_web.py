"""The web tools against real local HTTP servers: fetch (redirects, limits, content types,
timeouts, private-network blocking), the SearxNG adapter, and the tool wrappers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from llmsys.agent import web
from llmsys.agent.tools import MAX_OBSERVATION_CHARS, ToolArgumentError
from llmsys.agent.web import (
    FetchConfig,
    FetchError,
    SearchError,
    SearchHit,
    SearxNGSearch,
    address_is_public,
    check_public_host,
    fetch,
    web_fetch_tool,
    web_search_tool,
)

ARTICLE = """<!DOCTYPE html><html><head><title>The Quiet Harbour | Example News</title>
<script>var tracking = "SCRIPT_JUNK";</script><style>.x { color: red }</style></head>
<body><nav><a href="/">Home</a> <a href="/about">About</a> NAV_JUNK</nav>
<article><h1>The Quiet Harbour</h1>
<p>The harbour town of Eastwick has seen fishing boats return at dawn for three hundred years,
and the morning market still opens before the sun is fully up over the breakwater.</p>
<h2>A changing trade</h2>
<p>Local fishermen say the catch has changed: cod is rarer, while mackerel and squid now fill
the nets. See <a href="/reports/2024">the annual report</a> for the harbour office figures.</p>
<p>Despite the changes, the co-operative has grown to forty members, and the new cold store
opened last spring with help from a regional development grant.</p></article>
<footer>FOOTER_JUNK</footer><script>console.log("MORE_SCRIPT_JUNK")</script></body></html>"""

TINY = ("<html><head><title> Tiny\n page </title><script>SCRIPT_JUNK()</script>"
        "<style>p {}</style></head><body><p>Hello tiny world</p></body></html>")

SEARCH_RESULTS = [
    {"title": "HTTPX", "url": "https://www.python-httpx.org/",
     "content": "A next-generation   HTTP client\nfor Python."},
    {"title": "HTTPX (again)", "url": "https://www.python-httpx.org", "content": "duplicate"},
    {"title": "Streaming", "url": "https://www.python-httpx.org/quickstart/",
     "content": "Stream responses with client.stream()."},
    {"title": "", "url": "https://example.org/no-title", "content": ""},
    {"title": "no url"},
]

HUGE_BYTES = 50 * 2**20


@dataclass
class Site:
    """What the test server saw and did; `stop` releases handlers that wait or trickle."""

    port: int = 0
    paths: list[str] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    search_queries: list[dict[str, list[str]]] = field(default_factory=list)
    huge_sent: int = 0
    huge_done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = urlsplit(self.path).path
            site.paths.append(path)
            site.user_agents.append(self.headers.get("User-Agent", ""))
            try:
                self.route(path)
            except OSError:  # the client hung up (cut a body short, timed out)
                pass

        def route(self, path: str) -> None:
            parts = path.strip("/").split("/")
            if path == "/article":
                self.reply(200, "text/html; charset=utf-8", ARTICLE.encode())
            elif path == "/tiny":
                self.reply(200, "text/html", TINY.encode())
            elif parts[0] == "redirect":
                self.redirect_chain(int(parts[1]))
            elif path == "/absolute":
                self.redirect(f"{site.base}/redirect/2")
            elif path == "/loop/a":
                self.redirect("/loop/b")
            elif path == "/loop/b":
                self.redirect(f"{site.base}/loop/a")
            elif path == "/to-file":
                self.redirect("file:///etc/passwd")
            elif path == "/to-private":
                self.redirect(f"{site.base}/article")
            elif parts[0] == "status":
                self.reply(int(parts[1]), "text/html", b"<h1>nope</h1>")
            elif path == "/huge":
                self.huge()
            elif path == "/trickle":
                self.trickle()
            elif path == "/stall":
                self.stall()
            elif path.endswith("/search"):
                self.search(parts[0])
            else:
                self.content(path)

        def content(self, path: str) -> None:
            bodies: dict[str, tuple[str | None, bytes]] = {
                "/image": ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
                "/binary": ("application/octet-stream", bytes(range(256))),
                "/json": ("application/json", b'{"name":"llmsys","tags":["a","b"],"n":{"x":1}}'),
                "/bad-json": ("application/json", b'{"name": "llmsys", '),
                "/latin1": ("text/plain; charset=iso-8859-1",
                            "Café crème, naïve façade".encode("latin-1")),
                "/meta-charset": ("text/html", '<html><head><meta charset="windows-1252">'
                                  '<title>Résumé</title></head><body><p>Café</p></body></html>'
                                  .encode("cp1252")),
                "/no-type-html": (None, TINY.encode()),
                "/no-type-text": (None, "plain words, ünïcode".encode()),
                "/no-type-binary": (None, b"\x00\x01\x02\xff" * 64),
                "/long": ("text/plain", b"word " * 20_000),
            }
            if path not in bodies:
                self.reply(404, "text/plain", b"not found")
                return
            content_type, body = bodies[path]
            self.reply(200, content_type, body)

        def reply(self, status: int, content_type: str | None, body: bytes) -> None:
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str, status: int = 302) -> None:
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def redirect_chain(self, left: int) -> None:
            if left == 0:
                self.reply(200, "text/plain", b"arrived")
            else:  # relative Location, alternating the status codes
                self.redirect(f"/redirect/{left - 1}", 301 if left % 2 else 307)

        def huge(self) -> None:  # no Content-Length: streamed until the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"a" * 65536
            try:
                while site.huge_sent < HUGE_BYTES and not site.stop.is_set():
                    self.wfile.write(chunk)
                    site.huge_sent += len(chunk)
            finally:
                site.huge_done.set()

        def trickle(self) -> None:  # a byte every 0.2 s, for as long as anyone listens
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            while not site.stop.wait(0.2):
                self.wfile.write(b"x")

        def stall(self) -> None:  # headers, then nothing
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            site.stop.wait(10)

        def search(self, prefix: str) -> None:
            site.search_queries.append(parse_qs(urlsplit(self.path).query))
            if prefix == "nojson":  # SearxNG without the json format enabled
                self.reply(403, "text/html", b"<html><body>403 Forbidden</body></html>")
            elif prefix == "slow":
                site.stop.wait(10)
            elif prefix == "broken":
                self.reply(502, "application/json", b'{"error": "bad gateway"}')
            else:
                results = [] if prefix == "empty" else SEARCH_RESULTS
                body = json.dumps({"query": "q", "results": results}).encode()
                self.reply(200, "application/json", body)

    return Handler


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    state = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                              daemon=True)
    thread.start()
    yield state
    state.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local server must be reached directly, whatever the environment says."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------- content

def test_article_becomes_markdown_without_junk(site: Site) -> None:
    result = fetch(f"{site.base}/article")
    assert result.status == 200 and result.content_type == "text/html"
    assert result.title == "The Quiet Harbour | Example News"
    assert "# The Quiet Harbour" in result.text
    assert "## A changing trade" in result.text
    assert "fishing boats return at dawn" in result.text
    assert f"[the annual report]({site.base}/reports/2024)" in result.text  # absolute link
    for junk in ("SCRIPT_JUNK", "NAV_JUNK", "FOOTER_JUNK", "color: red"):
        assert junk not in result.text
    assert not result.truncated and result.redirects == []
    assert site.user_agents[-1] == "llmsys-agent/0.1"


def test_tiny_page_keeps_its_text_without_scripts(site: Site) -> None:
    result = fetch(f"{site.base}/tiny")
    assert result.title == "Tiny page"
    assert "Hello tiny world" in result.text
    assert "SCRIPT_JUNK" not in result.text and "p {}" not in result.text


def test_fallback_text_skips_scripts_and_breaks_blocks() -> None:
    parser = web._TextParser()
    parser.feed("<title>T</title><div>one<script>x()</script></div><p>two &amp; three</p>")
    assert parser.text() == "one\n\ntwo & three" and "".join(parser.title) == "T"


def test_html_to_text_falls_back_when_trafilatura_finds_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "_trafilatura_markdown", lambda html, url: None)
    title, text = web.html_to_text(ARTICLE)
    assert title == "The Quiet Harbour | Example News"
    assert "The Quiet Harbour\n\nThe harbour town of Eastwick" in text
    assert "NAV_JUNK" in text and "SCRIPT_JUNK" not in text and "color: red" not in text


def test_json_is_pretty_printed(site: Site) -> None:
    result = fetch(f"{site.base}/json")
    expected = {"name": "llmsys", "tags": ["a", "b"], "n": {"x": 1}}
    assert result.content_type == "application/json" and result.title is None
    assert result.text == json.dumps(expected, indent=2)
    assert fetch(f"{site.base}/bad-json").text == '{"name": "llmsys", '  # raw when invalid


def test_charsets_from_header_and_meta(site: Site) -> None:
    assert fetch(f"{site.base}/latin1").text == "Café crème, naïve façade"
    result = fetch(f"{site.base}/meta-charset")
    assert result.title == "Résumé" and "Café" in result.text


def test_missing_content_type_is_sniffed(site: Site) -> None:
    html = fetch(f"{site.base}/no-type-html")
    assert html.content_type == "text/html" and html.title == "Tiny page"
    text = fetch(f"{site.base}/no-type-text")
    assert text.content_type == "text/plain" and text.text == "plain words, ünïcode"
    with pytest.raises(FetchError, match="no Content-Type and the body is not text"):
        fetch(f"{site.base}/no-type-binary")


@pytest.mark.parametrize("path, content_type", [("/image", "image/png"),
                                                ("/binary", "application/octet-stream")])
def test_binary_content_types_are_refused(site: Site, path: str, content_type: str) -> None:
    with pytest.raises(FetchError, match=f"unsupported content type '{content_type}'.*HTML"):
        fetch(site.base + path)


def test_max_chars_cuts_text_with_a_note(site: Site) -> None:
    result = fetch(f"{site.base}/article", FetchConfig(max_chars=50))
    assert result.truncated
    assert result.text.startswith("# The Quiet Harbour")
    assert "more characters cut (max_chars=50)" in result.text


def test_huge_body_is_cut_at_max_bytes_without_reading_it_all(site: Site) -> None:
    start = time.monotonic()
    result = fetch(f"{site.base}/huge", FetchConfig(max_bytes=256 * 1024, max_chars=300_000))
    elapsed = time.monotonic() - start
    assert result.truncated and elapsed < 5
    assert result.text.startswith("a" * 256 * 1024)
    assert "longer than max_bytes=262144 bytes" in result.text
    assert site.huge_done.wait(5)  # the server noticed the hang-up and stopped
    assert site.huge_sent < HUGE_BYTES // 2


# ----------------------------------------------------------------------------- redirects

def test_relative_redirect_chain_within_the_cap(site: Site) -> None:
    result = fetch(f"{site.base}/redirect/3", FetchConfig(max_redirects=3))
    assert result.text == "arrived" and result.url == f"{site.base}/redirect/0"
    assert result.redirects == [f"{site.base}/redirect/{n}" for n in (3, 2, 1)]


def test_absolute_redirect_then_relative(site: Site) -> None:
    result = fetch(f"{site.base}/absolute")
    assert result.url == f"{site.base}/redirect/0"
    assert result.redirects == [f"{site.base}/absolute", f"{site.base}/redirect/2",
                                f"{site.base}/redirect/1"]


def test_too_many_redirects_names_the_cap(site: Site) -> None:
    with pytest.raises(FetchError, match="too many redirects.*max_redirects=5"):
        fetch(f"{site.base}/redirect/7")
    with pytest.raises(FetchError, match="max_redirects=0"):
        fetch(f"{site.base}/redirect/1", FetchConfig(max_redirects=0))


def test_redirect_loop_is_detected(site: Site) -> None:
    with pytest.raises(FetchError, match="redirect loop: .*/loop/a -> .*/loop/b -> .*/loop/a"):
        fetch(f"{site.base}/loop/a", FetchConfig(max_redirects=50))


def test_redirect_to_file_url_is_refused(site: Site) -> None:
    with pytest.raises(FetchError, match="redirects to a URL that cannot be fetched.*'file'"):
        fetch(f"{site.base}/to-file")


@pytest.mark.parametrize("status", [404, 500])
def test_error_status_is_named(site: Site, status: int) -> None:
    with pytest.raises(FetchError, match=f"/status/{status} answered HTTP {status}"):
        fetch(f"{site.base}/status/{status}")


# ----------------------------------------------------------------------------- timeouts

def test_trickling_server_is_cut_off_by_the_total_timeout(site: Site) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="total timeout of 1.5 s"):
        fetch(f"{site.base}/trickle", FetchConfig(read_timeout=0.5, total_timeout=1.5))
    assert 1.4 < time.monotonic() - start < 3.0


def test_stalled_server_hits_the_read_timeout(site: Site) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match="read timeout: no data for 0.5 s"):
        fetch(f"{site.base}/stall", FetchConfig(read_timeout=0.5, total_timeout=5))
    assert time.monotonic() - start < 2.0


def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match=f"could not fetch http://127.0.0.1:{port}/"):
        fetch(f"http://127.0.0.1:{port}/")


# ----------------------------------------------------------------------------- URLs

@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "scheme 'file'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("ftp://example.com/x", "scheme 'ftp'"),
    ("example.com/page", "no scheme"),
    ("http://", "missing or invalid host"),
    ("http://exa mple.com/", "missing or invalid host"),
    ("http://example.com:99999/", "port 99999"),
    ("http://[::1", "malformed URL"),
    ("", "malformed URL"),
])
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        fetch(url)


def test_internationalised_host_names_are_accepted() -> None:
    from llmsys.agent.web import check_url
    assert check_url("http://bücher.de/x").raw_host == b"xn--bcher-kva.de"
    assert check_url("http://[::1]:8080/").port == 8080


@pytest.mark.parametrize("address, public", [
    ("93.184.216.34", True), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("240.0.0.1", False), ("255.255.255.255", False),
    ("::1", False), ("fd00::1", False), ("fe80::1%eth0", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::", False),
])
def test_address_is_public(address: str, public: bool) -> None:
    assert address_is_public(address) is public


def test_check_public_host_resolves_numeric_hosts() -> None:
    with pytest.raises(FetchError, match="refused.*127.0.0.1"):
        check_public_host(httpx.URL("http://2130706433:80/"))  # 127.0.0.1 as one number


def test_private_networks_blocked_end_to_end(site: Site) -> None:
    blocking = FetchConfig(block_private_networks=True)
    before = len(site.paths)
    with pytest.raises(FetchError, match="refused.*127.0.0.1.*block_private_networks"):
        fetch(f"{site.base}/article", blocking)
    assert len(site.paths) == before  # refused before connecting


def test_redirect_to_a_private_host_is_blocked(site: Site,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_resolve = web.resolve_host

    def resolve(host: str, port: int) -> list[str]:  # "localhost" plays a public host
        return ["93.184.216.34"] if host == "localhost" else real_resolve(host, port)

    monkeypatch.setattr(web, "resolve_host", resolve)
    start = f"http://localhost:{site.port}/to-private"
    with pytest.raises(FetchError, match=f"refused {site.base}/article: host '127.0.0.1'"):
        fetch(start, FetchConfig(block_private_networks=True))
    assert site.paths[-1] == "/to-private"  # the private hop was never requested


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("kwargs, message", [
    ({"read_timeout": 0}, "read_timeout must be a finite number of seconds > 0, got 0"),
    ({"total_timeout": float("inf")}, "total_timeout"),
    ({"connect_timeout": "5"}, "connect_timeout"),
    ({"max_bytes": 0}, "max_bytes must be an integer >= 1, got 0"),
    ({"max_redirects": -1}, "max_redirects must be an integer >= 0"),
    ({"max_chars": 2.5}, "max_chars"),
    ({"user_agent": "bot\r\nX-Evil: 1"}, "user_agent"),
    ({"block_private_networks": "yes"}, "block_private_networks must be True or False"),
])
def test_fetch_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FetchConfig(**kwargs)


# ----------------------------------------------------------------------------- tools

def test_web_fetch_tool_formats_and_never_raises(site: Site) -> None:
    fetch_tool = web_fetch_tool()
    assert fetch_tool.name == "web_fetch" and fetch_tool.spec()["function"]["name"] == "web_fetch"
    out = fetch_tool.run({"url": f"{site.base}/absolute"})
    assert out == f"URL: {site.base}/redirect/0\n\narrived"
    out = fetch_tool.run({"url": f"{site.base}/article"})
    assert out.startswith(f"# The Quiet Harbour | Example News\nURL: {site.base}/article\n\n")
    assert fetch_tool.run({"url": f"{site.base}/status/404"}).startswith(
        f"Error: {site.base}/status/404 answered HTTP 404")
    assert fetch_tool.run({"url": "file:///etc/passwd"}).startswith("Error: unsupported URL")
    assert fetch_tool.run('{"url": "' + site.base + '/image"}').startswith(
        "Error: unsupported content type 'image/png'")


def test_web_fetch_tool_keeps_its_note_within_the_observation_limit(site: Site) -> None:
    out = web_fetch_tool(FetchConfig(max_chars=1_000_000)).run({"url": f"{site.base}/long"})
    assert len(out) <= MAX_OBSERVATION_CHARS
    assert out.startswith(f"URL: {site.base}/long\n\nword word")
    assert out.endswith("more characters cut (the observation limit)]")


def test_web_fetch_tool_schema() -> None:
    fetch_tool = web_fetch_tool(FetchConfig(block_private_networks=True))
    assert fetch_tool.validate({"url": "https://example.com"}) == {"url": "https://example.com"}
    with pytest.raises(ToolArgumentError, match="missing required field 'url'"):
        fetch_tool.validate({})
    with pytest.raises(ToolArgumentError, match="unexpected field"):
        fetch_tool.validate({"url": "https://example.com", "method": "POST"})
    assert fetch_tool.run({"url": "http://127.0.0.1:9/"}).startswith("Error: refused")


# ----------------------------------------------------------------------------- search

def test_searxng_adapter_sends_the_query_and_dedupes(site: Site) -> None:
    backend = SearxNGSearch(site.base + "/", categories="general", language="en")
    hits = backend.search("  httpx streaming ", 10)
    assert site.search_queries[-1] == {"q": ["httpx streaming"], "format": ["json"],
                                       "categories": ["general"], "language": ["en"]}
    assert hits == [
        SearchHit("HTTPX", "https://www.python-httpx.org/", "A next-generation HTTP client for "
                  "Python."),
        SearchHit("Streaming", "https://www.python-httpx.org/quickstart/",
                  "Stream responses with client.stream()."),
        SearchHit("https://example.org/no-title", "https://example.org/no-title", ""),
    ]
    assert [h.url for h in backend.search("httpx", 2)] == [
        "https://www.python-httpx.org/", "https://www.python-httpx.org/quickstart/"]
    assert SearxNGSearch(site.base).search("x", 1) and "categories" not in \
        site.search_queries[-1]


def test_web_search_tool_formats_hits(site: Site) -> None:
    search_tool = web_search_tool(SearxNGSearch(site.base), max_results=2)
    out = search_tool.run({"query": "httpx"})
    assert out == ("1. HTTPX — https://www.python-httpx.org/\n"
                   "   A next-generation HTTP client for Python.\n"
                   "2. Streaming — https://www.python-httpx.org/quickstart/\n"
                   "   Stream responses with client.stream().")
    out = search_tool.run({"query": "httpx", "max_results": 3})
    assert out.endswith("3. https://example.org/no-title — https://example.org/no-title")
    empty = web_search_tool(SearxNGSearch(site.base + "/empty"))
    assert empty.run({"query": "nothing"}) == "No results for 'nothing'."


def test_search_endpoint_without_json_format(site: Site) -> None:
    backend = SearxNGSearch(site.base + "/nojson")
    with pytest.raises(SearchError, match="HTTP 403.*enable the json format in SearxNG"):
        backend.search("httpx", 5)
    out = web_search_tool(backend).run({"query": "httpx"})
    assert out.startswith(f"Error: search at {site.base}/nojson/search did not answer JSON")


def test_search_errors_bad_status_and_timeout(site: Site) -> None:
    with pytest.raises(SearchError, match="answered HTTP 502"):
        SearxNGSearch(site.base + "/broken").search("httpx", 5)
    start = time.monotonic()
    with pytest.raises(SearchError, match="timed out after 0.5 s"):
        SearxNGSearch(site.base + "/slow", timeout=0.5).search("httpx", 5)
    assert time.monotonic() - start < 2.0


def test_search_configs_and_schema_are_validated(site: Site) -> None:
    with pytest.raises(ValueError, match="base_url.*scheme 'ftp'"):
        SearxNGSearch("ftp://search.example")
    with pytest.raises(ValueError, match="timeout"):
        SearxNGSearch("http://search.example", timeout=-1)
    with pytest.raises(ValueError, match="language must be None or a non-empty string"):
        SearxNGSearch("http://search.example", language="")
    with pytest.raises(ValueError, match="max_results must be at most 10, got 11"):
        web_search_tool(SearxNGSearch(site.base), max_results=11)
    search_tool = web_search_tool(SearxNGSearch(site.base))
    assert search_tool.name == "web_search"
    assert search_tool.validate({"query": "x", "max_results": 10})
    for bad in ({"query": "x", "max_results": 11}, {"query": "x", "max_results": 0},
                {"query": 3}, {}):
        with pytest.raises(ToolArgumentError):
            search_tool.validate(bad)
