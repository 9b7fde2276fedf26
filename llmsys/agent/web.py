"""Web tools for the agent: fetch a page as readable text, and search through SearxNG.

    result = fetch("https://example.com/article")        # FetchResult, or raises FetchError
    print(result.title, result.url, result.text)          # text: markdown for HTML pages

    fetch_tool = web_fetch_tool(FetchConfig(block_private_networks=True))
    fetch_tool.run({"url": "https://example.com"})  # "# Title\nURL: ...\n\n..." or "Error: ..."

    search_tool = web_search_tool(SearxNGSearch("http://localhost:8888"))
    search_tool.run({"query": "python httpx streaming"})  # "1. Title — URL\n   snippet\n..."

`fetch` follows redirects itself, so every hop is counted, checked for loops and (with
`block_private_networks`) refused when its host resolves to a loopback, private, link-local or
reserved address. The body is streamed under a byte cap and a deadline over the whole fetch.
A body over `max_bytes` is not an error: reading stops there and the text gets a note saying
the page was cut (`truncated=True`). Content is chosen by Content-Type: HTML becomes markdown
(trafilatura, with a plain tag-stripping fallback), text/* comes back as is, JSON is
pretty-printed, anything else (images, PDF, binary) is refused. Without a Content-Type the
body is sniffed: `<...` is HTML, otherwise text if it decodes as UTF-8.

`SearxNGSearch` adapts any SearxNG-compatible `/search?format=json` endpoint to the
`SearchBackend` protocol; another backend only needs a `search(query, max_results)` method
that returns `SearchHit`s and raises `SearchError` on failure.

The tool wrappers never raise on expected failures: they return text starting with "Error: "
that names the URL (or query) and the problem, for the model to read.

Limitations: the private-network check resolves the host itself, and httpx resolves it again
to connect, so a DNS server that answers differently the second time (DNS rebinding) is not
stopped; name resolution for that check has no timeout of its own. The total deadline is
checked between reads, and a single read waits at most min(read_timeout, time left when the
hop started), so a server that stalls near the deadline can overrun it by up to that wait.
"""

from __future__ import annotations

import codecs
import ipaddress
import json
import math
import re
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from typing import Literal, Protocol

import httpx

from llmsys.agent.tools import MAX_OBSERVATION_CHARS, Tool

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
SUPPORTED_TYPES = "HTML (text/html, application/xhtml+xml), text/*, JSON (application/json, +json)"
MAX_TITLE_CHARS = 300
MAX_SNIPPET_CHARS = 400
MAX_SEARCH_RESULTS = 10

Kind = Literal["html", "text", "json", "sniff"]


class FetchError(ValueError):
    """A fetch that cannot give a page; the message names the URL and the problem."""


class SearchError(RuntimeError):
    """A search backend that failed; the message names the endpoint and the problem."""


# ----------------------------------------------------------------------------- config

def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class FetchConfig:
    """Limits and identity for `fetch`. Timeouts are in seconds; `total_timeout` bounds the
    whole fetch (every redirect hop and the body), `max_bytes` the body read from the server
    (decompressed), `max_chars` the text handed back."""

    connect_timeout: float = 5
    read_timeout: float = 10
    total_timeout: float = 20
    max_bytes: int = 2 * 2**20
    max_redirects: int = 5
    max_chars: int = 20_000
    user_agent: str = "llmsys-agent/0.1"
    block_private_networks: bool = False

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            _check_positive(name, getattr(self, name))
        _check_int("max_bytes", self.max_bytes, 1)
        _check_int("max_redirects", self.max_redirects, 0)
        _check_int("max_chars", self.max_chars, 1)
        if not isinstance(self.user_agent, str) or not self.user_agent.strip() or any(
                c in self.user_agent for c in "\r\n\0"):
            raise ValueError("user_agent must be a non-empty string on one line, got "
                             f"{self.user_agent!r}")
        if not isinstance(self.block_private_networks, bool):
            raise ValueError("block_private_networks must be True or False, got "
                             f"{self.block_private_networks!r}")


DEFAULT_FETCH_CONFIG = FetchConfig()


@dataclass
class FetchResult:
    """A fetched page. `url` is where the redirects ended; `redirects` lists the URLs that
    answered with a redirect, in order. `content_type` is the media type without parameters
    (the sniffed one when the server sent none). `truncated` is True when the body was cut at
    `max_bytes` or the text at `max_chars` (the text then ends with a note saying so)."""

    url: str
    status: int
    content_type: str
    title: str | None
    text: str
    truncated: bool
    redirects: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- URLs

def check_url(url: str) -> httpx.URL:
    """`url` parsed, if it is an absolute http(s) URL with a host; else FetchError."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError(f"malformed URL {url!r}: expected an http:// or https:// URL")
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as e:
        raise FetchError(f"malformed URL {url!r}: {e}") from None
    if parsed.scheme not in ("http", "https"):
        scheme = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
        raise FetchError(f"unsupported URL {url!r}: {scheme}; only http:// and https:// "
                         "URLs can be fetched")
    host = parsed.raw_host.decode("ascii", errors="replace").lower()  # IDNA: xn--... form
    if not re.fullmatch(r"[a-z0-9._:-]+", host):
        raise FetchError(f"malformed URL {url!r}: missing or invalid host {parsed.host!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise FetchError(f"malformed URL {url!r}: port {parsed.port} is not in 1..65535")
    return parsed


def address_is_public(address: str) -> bool:
    """True for a globally routable IP address; False for loopback, private, link-local,
    shared, multicast, unspecified and reserved ones (IPv4-mapped IPv6 is unwrapped)."""
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (as the connection would resolve it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_public_host(url: httpx.URL) -> None:
    """FetchError unless every address of the URL's host is public."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = resolve_host(url.host, port)
    except (OSError, UnicodeError) as e:
        raise FetchError(f"cannot resolve host {url.host!r} of {url}: {e}") from None
    blocked = [a for a in addresses if not address_is_public(a)]
    if blocked or not addresses:
        raise FetchError(f"refused {url}: host {url.host!r} resolves to a loopback, private, "
                         f"link-local or reserved address ({', '.join(blocked) or 'none'}) "
                         "and block_private_networks is on")


# ----------------------------------------------------------------------------- fetch

@cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every request (building one reads the CA bundle, which
    costs a noticeable fraction of a second)."""
    return httpx.create_ssl_context()


def fetch(url: str, config: FetchConfig = DEFAULT_FETCH_CONFIG) -> FetchResult:
    """GET `url` and return its readable text; FetchError for anything that is not a page."""
    deadline = time.monotonic() + config.total_timeout
    current = check_url(url)
    redirects: list[str] = []
    headers = {"User-Agent": config.user_agent,
               "Accept": "text/html,application/xhtml+xml,text/*;q=0.9,application/json;q=0.9"}
    with httpx.Client(headers=headers, follow_redirects=False, verify=_tls_context()) as client:
        while True:
            if config.block_private_networks:
                check_public_host(current)
            with _translate_errors(current, config, deadline):
                request = client.build_request("GET", current, timeout=_hop_timeout(
                    config, deadline, current))
                response = client.send(request, stream=True)
                try:
                    target = _redirect_target(response, current)
                    if target is None:
                        return _read_page(response, current, redirects, config, deadline)
                finally:
                    response.close()
            redirects.append(str(current))
            _check_redirect(target, redirects, config)
            current = target


def _hop_timeout(config: FetchConfig, deadline: float, url: httpx.URL) -> httpx.Timeout:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(_total_timeout_message(url, config))
    connect, read = min(config.connect_timeout, left), min(config.read_timeout, left)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def _total_timeout_message(url: httpx.URL, config: FetchConfig) -> str:
    return (f"timed out fetching {url}: total timeout of {config.total_timeout:g} s over the "
            "whole fetch (redirects and body) ran out")


@contextmanager
def _translate_errors(url: httpx.URL, config: FetchConfig, deadline: float) -> Iterator[None]:
    """httpx's exceptions as FetchErrors that say which limit or failure it was."""
    try:
        yield
    except httpx.TimeoutException as e:
        if time.monotonic() >= deadline - 0.01:
            raise FetchError(_total_timeout_message(url, config)) from None
        which = type(e).__name__
        if isinstance(e, httpx.ConnectTimeout):
            which = f"connect timeout of {config.connect_timeout:g} s"
        elif isinstance(e, httpx.ReadTimeout):
            which = f"read timeout: no data for {config.read_timeout:g} s"
        raise FetchError(f"timed out fetching {url}: {which}") from None
    except httpx.InvalidURL as e:
        raise FetchError(f"malformed URL {url}: {e}") from None
    except httpx.HTTPError as e:
        raise FetchError(f"could not fetch {url}: {type(e).__name__}: {e or 'no details'}"
                         ) from None


def _redirect_target(response: httpx.Response, url: httpx.URL) -> httpx.URL | None:
    """Where a redirect points (resolved against `url`), None for a final answer; FetchError
    for an error status."""
    status = response.status_code
    if status in REDIRECT_STATUSES:
        location = response.headers.get("location", "").strip()
        if not location:
            raise FetchError(f"{url} answered HTTP {status} (a redirect) without a Location "
                             "header")
        try:
            target = url.join(location)
        except httpx.InvalidURL as e:
            raise FetchError(f"{url} redirects to a malformed URL {location!r}: {e}") from None
        return _checked_redirect_url(target, url)
    if not 200 <= status < 300:
        reason = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise FetchError(f"{url} answered HTTP {status}{reason}")
    return None


def _checked_redirect_url(target: httpx.URL, source: httpx.URL) -> httpx.URL:
    try:
        return check_url(str(target))
    except FetchError as e:
        raise FetchError(f"{source} redirects to a URL that cannot be fetched: {e}") from None


def _check_redirect(target: httpx.URL, redirects: list[str], config: FetchConfig) -> None:
    if str(target) in redirects:
        chain = " -> ".join(redirects[redirects.index(str(target)):] + [str(target)])
        raise FetchError(f"redirect loop: {chain}")
    if len(redirects) > config.max_redirects:
        raise FetchError(f"too many redirects fetching {redirects[0]}: more than "
                         f"max_redirects={config.max_redirects} (the chain went on to {target})")


# ----------------------------------------------------------------------------- content

def _read_page(response: httpx.Response, url: httpx.URL, redirects: list[str],
               config: FetchConfig, deadline: float) -> FetchResult:
    mime, charset = _parse_content_type(response.headers.get("content-type", ""))
    kind = _content_kind(mime, url)
    body, body_cut = _read_body(response, url, config, deadline)
    if kind == "sniff":
        kind, mime = _sniff(body, url)
    title, text = _to_text(body, kind, charset, url)
    text, text_cut = _cut_text(text, config.max_chars, f"max_chars={config.max_chars}")
    if body_cut:
        text += (f"\n\n[The page is longer than max_bytes={config.max_bytes} bytes; reading "
                 "stopped there, so the text above is incomplete.]")
    return FetchResult(str(url), response.status_code, mime, title, text, body_cut or text_cut,
                       list(redirects))


def _parse_content_type(header: str) -> tuple[str, str | None]:
    """(media type in lower case, charset or None) from a Content-Type header."""
    parts = header.split(";")
    mime, charset = parts[0].strip().lower(), None
    for param in parts[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip("\"'"):
            charset = value.strip().strip("\"'")
    return mime, charset


def _content_kind(mime: str, url: httpx.URL) -> Kind:
    if not mime:
        return "sniff"
    if mime in HTML_TYPES:
        return "html"
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if mime.startswith("text/"):
        return "text"
    raise FetchError(f"unsupported content type {mime!r} at {url}; supported: {SUPPORTED_TYPES}")


def _read_body(response: httpx.Response, url: httpx.URL, config: FetchConfig,
               deadline: float) -> tuple[bytes, bool]:
    """At most `max_bytes` of the (decompressed) body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise FetchError(_total_timeout_message(url, config))
        chunks.append(chunk)
        size += len(chunk)
        if size > config.max_bytes:
            return b"".join(chunks)[:config.max_bytes], True
    return b"".join(chunks), False


def _sniff(body: bytes, url: httpx.URL) -> tuple[Kind, str]:
    head = body[:8192].removeprefix(codecs.BOM_UTF8)
    if head.lstrip().startswith(b"<"):
        return "html", "text/html"
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        raise FetchError(f"unsupported content: {url} sent no Content-Type and the body is not "
                         f"text; supported: {SUPPORTED_TYPES}") from None
    return "text", "text/plain"


def _to_text(body: bytes, kind: Kind, charset: str | None,
             url: httpx.URL) -> tuple[str | None, str]:
    """(title, readable text) for a body of the given kind."""
    if kind == "html":
        html = _decode(body, charset or _meta_charset(body))
        return html_to_text(html, str(url))
    text = _decode(body, charset)
    if kind == "json":
        try:
            return None, json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:  # invalid (or cut) JSON: the raw text is still useful
            return None, text
    return None, text


def _meta_charset(body: bytes) -> str | None:
    head = body[:4096].decode("ascii", errors="ignore")
    match = re.search(r"<meta[^>]*charset\s*=\s*[\"']?\s*([\w.:-]+)", head, re.IGNORECASE)
    return match.group(1) if match else None


def _decode(body: bytes, charset: str | None) -> str:
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace")
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return body.decode("utf-8", errors="replace")


def _cut_text(text: str, max_chars: int, limit: str) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    cut = len(text) - max_chars
    return text[:max_chars] + f"\n\n[... {cut} more characters cut ({limit})]", True


# ----------------------------------------------------------------------------- HTML

def html_to_text(html: str, url: str | None = None) -> tuple[str | None, str]:
    """(title, markdown) for an HTML page: the main content through trafilatura (links made
    absolute against `url`), or all visible text when trafilatura finds no main content."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title).split())[:MAX_TITLE_CHARS] or None
    markdown = _trafilatura_markdown(html, url)
    return title, markdown if markdown else parser.text()


def _trafilatura_markdown(html: str, url: str | None) -> str | None:
    import trafilatura

    try:
        markdown = trafilatura.extract(
            html, url=url, output_format="markdown", include_links=True, include_tables=True,
            include_images=False, include_comments=False, with_metadata=False)
    except Exception:  # hostile HTML must not crash the agent: use the fallback
        return None
    return markdown.strip() if markdown and markdown.strip() else None


class _TextParser(HTMLParser):
    """The <title> and the visible text of an HTML page (script, style and the like skipped),
    with line breaks at block elements."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                       "section", "article", "header", "footer", "nav", "ul", "ol", "table",
                       "blockquote", "pre", "hr", "main", "aside", "dd", "dt", "form"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.parts: list[str] = []
        self.skipping: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping.append(tag)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP and tag in self.skipping:
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag):]
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ----------------------------------------------------------------------------- search

@dataclass(frozen=True)
class SearchHit:
    """One search result: its title, URL and a short snippet of the page."""

    title: str
    url: str
    snippet: str = ""


class SearchBackend(Protocol):
    """A web search: at most `max_results` hits, SearchError when the search fails."""

    def search(self, query: str, max_results: int) -> list[SearchHit]: ...


@dataclass
class SearxNGSearch:
    """A SearxNG-compatible JSON endpoint: GET {base_url}/search?q=...&format=json. The
    instance must have `json` among `search.formats` in its settings.yml."""

    base_url: str
    timeout: float = 10
    categories: str | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        try:
            check_url(self.base_url)
        except FetchError as e:
            raise ValueError(f"base_url: {e}") from None
        _check_positive("timeout", self.timeout)
        for name in ("categories", "language"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be None or a non-empty string, got {value!r}")

    @property
    def endpoint(self) -> str:
        return self.base_url.strip().rstrip("/") + "/search"

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        if not isinstance(query, str) or not query.strip():
            raise SearchError(f"empty search query {query!r}")
        _check_int("max_results", max_results, 1)
        return _dedupe(_parse_results(self._get(query.strip()), self.endpoint))[:max_results]

    def _get(self, query: str) -> httpx.Response:
        params = {"q": query, "format": "json"}
        if self.categories:
            params["categories"] = self.categories
        if self.language:
            params["language"] = self.language
        try:
            return httpx.get(self.endpoint, params=params, timeout=self.timeout,
                             follow_redirects=True, verify=_tls_context(),
                             headers={"Accept": "application/json",
                                      "User-Agent": DEFAULT_FETCH_CONFIG.user_agent})
        except httpx.TimeoutException:
            raise SearchError(f"search at {self.endpoint} timed out after {self.timeout:g} s"
                              ) from None
        except httpx.HTTPError as e:
            raise SearchError(f"search at {self.endpoint} failed: {type(e).__name__}: "
                              f"{e or 'no details'}") from None


def _parse_results(response: httpx.Response, endpoint: str) -> list[dict]:
    mime, _ = _parse_content_type(response.headers.get("content-type", ""))
    is_json = mime == "application/json" or mime.endswith("+json")
    if response.status_code == 403 or (response.is_success and not is_json):
        raise SearchError(f"search at {endpoint} did not answer JSON (HTTP "
                          f"{response.status_code}, {mime or 'no content type'}): enable the "
                          "json format in SearxNG settings (search: formats: [html, json])")
    if not response.is_success:
        hint = " (rate limited: check SearxNG's limiter)" if response.status_code == 429 else ""
        raise SearchError(f"search at {endpoint} answered HTTP {response.status_code}{hint}")
    try:
        results = response.json().get("results")
    except (ValueError, AttributeError):
        raise SearchError(f"search at {endpoint} answered invalid JSON") from None
    if not isinstance(results, list):
        raise SearchError(f"search at {endpoint} answered JSON without a 'results' list")
    return [r for r in results if isinstance(r, dict)]


def _dedupe(results: list[dict]) -> list[SearchHit]:
    hits: list[SearchHit] = []
    seen: set[str] = set()
    for item in results:
        url = item.get("url")
        if not isinstance(url, str) or not url.strip():
            continue
        key = url.strip().split("#")[0].rstrip("/")
        if key in seen:
            continue
        seen.add(key)
        title = " ".join(str(item.get("title") or url).split())[:MAX_TITLE_CHARS]
        snippet = " ".join(str(item.get("content") or "").split())
        if len(snippet) > MAX_SNIPPET_CHARS:
            snippet = snippet[:MAX_SNIPPET_CHARS - 3].rstrip() + "..."
        hits.append(SearchHit(title, url.strip(), snippet))
    return hits


# ----------------------------------------------------------------------------- tools

def web_fetch_tool(config: FetchConfig = DEFAULT_FETCH_CONFIG) -> Tool:
    """The "web_fetch" tool: `url` -> "# <title>\\nURL: <final url>\\n\\n<text>" or "Error: ..."."""
    def web_fetch(url: str) -> str:
        try:
            result = fetch(url, config)
        except FetchError as e:
            return f"Error: {e}"
        head = (f"# {result.title}\n" if result.title else "") + f"URL: {result.url}\n\n"
        room = MAX_OBSERVATION_CHARS - len(head) - 100  # keep the whole note in the observation
        text, _ = _cut_text(result.text, max(room, 0), "the observation limit")
        return head + text

    parameters = {"type": "object", "additionalProperties": False, "required": ["url"],
                  "properties": {"url": {"type": "string", "minLength": 1,
                                         "description": "The http:// or https:// URL to read."}}}
    return Tool.from_schema(
        "web_fetch", "Fetch a web page by URL and return its title, final URL and readable "
        "text (markdown for HTML, pretty-printed JSON, plain text).", parameters, web_fetch)


def web_search_tool(backend: SearchBackend, max_results: int = 5) -> Tool:
    """The "web_search" tool: `query` (and optional `max_results`, 1..10) -> numbered hits
    "1. Title — URL\\n   snippet", "No results for ...", or "Error: ..."."""
    _check_int("max_results", max_results, 1)
    if max_results > MAX_SEARCH_RESULTS:
        raise ValueError(f"max_results must be at most {MAX_SEARCH_RESULTS}, got {max_results}")

    def web_search(query: str, max_results: int = max_results) -> str:
        try:
            hits = backend.search(query, max_results)
        except SearchError as e:
            return f"Error: {e}"
        return format_hits(hits[:max_results]) if hits else f"No results for {query!r}."

    parameters = {"type": "object", "additionalProperties": False, "required": ["query"],
                  "properties": {
                      "query": {"type": "string", "minLength": 1,
                                "description": "What to search the web for."},
                      "max_results": {"type": "integer", "minimum": 1,
                                      "maximum": MAX_SEARCH_RESULTS,
                                      "description": "How many results (default "
                                                     f"{max_results})."}}}
    return Tool.from_schema(
        "web_search", "Search the web; returns numbered results with title, URL and snippet. "
        "Use web_fetch to read a result.", parameters, web_search)


def format_hits(hits: list[SearchHit]) -> str:
    """Numbered search results: "1. Title — URL" with the snippet indented below."""
    lines = []
    for number, hit in enumerate(hits, 1):
        lines.append(f"{number}. {hit.title} — {hit.url}")
        if hit.snippet:
            lines.append(f"   {hit.snippet}")
    return "\n".join(lines)
