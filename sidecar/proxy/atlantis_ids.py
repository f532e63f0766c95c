"""Atlantis lock ids, decoded exactly as Atlantis decodes them (atlantis-lock-api.md "Lock id").

Atlantis links to a lock with its id double-encoded
(`/lock?id=owner%252Frepo%252F.%252Fdefault%252F`). Its router (gorilla/mux) decodes the `id`
query value once with Go's `url.QueryUnescape`; then `GET /lock` decodes it again with
`QueryUnescape` (`+` becomes a space) and `DELETE /locks` with `url.PathUnescape` (`+` stays),
so raw, single- and double-encoded ids all work. The sidecar must find the same id Atlantis
would, or it would serve one lock and Atlantis another; whenever this module cannot decode an id
the way Atlantis does, the caller hands the request to Atlantis unchanged and Atlantis gives its
own answer.

Go works on bytes; ids that are not UTF-8 after decoding are treated as undecodable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote_plus

from sidecar.routing.keys import ATLANTIS_PREFIX

_HEX = frozenset(b"0123456789abcdefABCDEF")


class EscapeError(ValueError):
    """Go's `url.EscapeError`; its text is Go's: `invalid URL escape "%zz"`."""

    def __init__(self, escape: bytes) -> None:
        self.escape = escape
        super().__init__(f'invalid URL escape "{escape.decode("latin-1")}"')


def _unescape(raw: bytes, *, plus_is_space: bool) -> bytes:
    """Go's `net/url.unescape` for query components (`plus_is_space`) and path segments."""
    if b"%" not in raw and not (plus_is_space and b"+" in raw):
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise EscapeError(raw[i : i + 3])
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        elif c == 0x2B and plus_is_space:  # '+'
            out.append(0x20)
            i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def query_unescape(raw: bytes) -> bytes:
    """Go's `url.QueryUnescape`."""
    return _unescape(raw, plus_is_space=True)


def path_unescape(raw: bytes) -> bytes:
    """Go's `url.PathUnescape`."""
    return _unescape(raw, plus_is_space=False)


def query_escape(text: str) -> str:
    """Go's `url.QueryEscape`: everything but `A-Za-z0-9-_.~` escaped, space as `+`."""
    return quote_plus(text, safe="")


def first_query_value(raw_query: str, key: str) -> bytes | None:
    """gorilla/mux `findFirstQueryKey`: the once-decoded value of the first `key`, else None.

    As in mux, pairs are split on `&` and `;`, and a pair whose name or value does not decode is
    skipped (a later pair with the same name may still match).
    """
    wanted = key.encode()
    for pair in raw_query.encode("utf-8", "surrogateescape").replace(b";", b"&").split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        if len(name) < len(wanted):
            continue
        try:
            if query_unescape(name) != wanted:
                continue
            return query_unescape(value)
        except EscapeError:
            continue
    return None


def is_valid_id(lock_id: str) -> bool:
    """Ids since Atlantis v0.40 are `{repo}/{path}/{workspace}/{project}` (4+ `/`)."""
    return lock_id.count("/") >= 4


@dataclass(frozen=True, slots=True)
class RequestedId:
    """The id an Atlantis lock route names, decoded as Atlantis would, and its engine key."""

    lock_id: str

    @property
    def key(self) -> str:
        return ATLANTIS_PREFIX + self.lock_id


def requested_id(raw_query: str, *, second_decode: str) -> RequestedId | None:
    """The lock id of `/lock` (`second_decode="query"`) or `/locks` (`"path"`), or None.

    None means "let Atlantis answer": no `id`, an empty one, one that does not decode, one that
    mux's `{id}` pattern (`.*`, no newlines) would not match, or one that is not a valid id.
    """
    once = first_query_value(raw_query, "id")
    if once is None or not once or b"\n" in once:
        return None
    try:
        twice = query_unescape(once) if second_decode == "query" else path_unescape(once)
        lock_id = twice.decode("utf-8")
    except (EscapeError, UnicodeDecodeError):
        return None
    if not is_valid_id(lock_id):
        return None
    return RequestedId(lock_id)


@dataclass(frozen=True, slots=True)
class IdParts:
    repo: str
    path: str
    workspace: str
    project: str


def split_id(lock_id: str, repo: str | None = None) -> IdParts:
    """Split `{repo}/{path}/{workspace}/{project}` for display.

    Repo names and paths may both contain `/`, so the split needs a rule. Workspace names cannot
    contain `/` (Terraform refuses them) and neither can Atlantis project names, so the last two
    segments are the workspace and the project. When the holder's repo is known (a pull-request
    owner) and the id starts with it, the rest is the path. Otherwise the repo is taken to be
    the first two segments (`owner/name`, as on GitHub), and everything between is the path.
    """
    head, workspace, project = lock_id.rsplit("/", 2)
    if repo and head.startswith(repo + "/") and len(head) > len(repo) + 1:
        return IdParts(repo, head[len(repo) + 1 :], workspace, project)
    owner, _, rest = head.partition("/")
    name, _, path = rest.partition("/")
    return IdParts(f"{owner}/{name}", path, workspace, project)
