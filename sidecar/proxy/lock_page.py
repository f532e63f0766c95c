"""The lock page (`GET /lock?id=`) for a lock the engine holds, laid out like Atlantis's.

Atlantis's page shows the id, repo owner and name, the pull request link, who locked it and the
workspace, with a "Discard Plan & Unlock" button that sends `DELETE /locks?id=<id, encoded
once>` and then returns to the index (atlantis-lock-api.md "Lock routes"). This page adds what
only the engine knows: the queue waiting behind the lock and the grant's fencing token.

Links are relative (`locks?id=...`, `./`), so the page works whatever base path Atlantis is
served under. Every value is HTML-escaped: ids, repo and user names come from users.
"""

from __future__ import annotations

import time
from html import escape

from sidecar.engine.model import Grant, KeyState
from sidecar.proxy.atlantis_ids import query_escape, split_id
from sidecar.proxy.atlantis_json import go_time

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 60rem; color: #222; padding: 0 1rem; }
h1 { font-size: 1.3rem; } h1 code { font-size: 1.1rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .4rem 1.2rem; }
dt { font-weight: 600; } dd { margin: 0; }
table { border-collapse: collapse; margin-top: .5rem; }
td, th { border-bottom: 1px solid #ddd; padding: .3rem .8rem; text-align: left; }
.badge { background: #f0ad4e; color: #fff; border-radius: 3px; padding: 0 .4rem; }
button { background: #d9534f; color: #fff; border: 0; border-radius: 4px; padding: .6rem 1rem;
         font-size: 1rem; cursor: pointer; margin-top: 1.5rem; }
"""

_SCRIPT = """
document.getElementById("discardPlanUnlock").addEventListener("click", function () {
  var button = this;
  if (!window.confirm("Discard the plan and unlock " + button.dataset.lockId + "?")) { return; }
  fetch(button.dataset.unlockUrl, {method: "DELETE", credentials: "same-origin"})
    .then(function (answer) {
      if (answer.ok) { window.location.replace("./?discard=true"); return; }
      return answer.text().then(function (text) { window.alert(text); });
    });
});
"""


def unlock_url(lock_id: str) -> str:
    """What the button sends: `locks?id=` with the id encoded once, as Atlantis's page does."""
    return "locks?id=" + query_escape(lock_id)


def render(lock_id: str, grant: Grant, state: KeyState, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    owner = grant.owner
    parts = split_id(lock_id, owner.repo)
    repo_owner, _, repo_name = parts.repo.rpartition("/")
    if owner.pull is not None:
        locked_by = owner.user or owner.id
        pull = f"{owner.repo}#{owner.pull}"
        # Only web links become links (never `javascript:`), whatever stored the owner.
        web_link = owner.url is not None and owner.url.startswith(("https://", "http://"))
        link = (
            f'<a href="{escape(owner.url or "")}" target="_blank" rel="noopener">'
            f"<code>{escape(owner.url or '')}</code></a>"
            if web_link
            else f"<code>{escape(pull)}</code>"
        )
    else:
        locked_by = owner.id
        link = "<code>(not a pull request)</code>"
    lease = (
        f"expires in {max(0.0, grant.lease_expires_at - now):.0f}s"
        if grant.lease_expires_at is not None
        else "none (held until released)"
    )
    rows = "".join(
        f"<tr><td>{i}</td><td><code>{escape(r.owner.id)}</code></td>"
        f"<td>{escape(r.priority.label)}</td><td>{max(0.0, now - r.enqueued_at):.0f}s</td></tr>"
        for i, r in enumerate(state.waiting, start=1)
    )
    queue = (
        "<table><tr><th>#</th><th>Waiting owner</th><th>Priority</th><th>Waiting for</th></tr>"
        f"{rows}</table>"
        if rows
        else "<p>Nobody is waiting for this lock.</p>"
    )
    e = escape
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>atlantis</title>
<style>{_STYLE}</style>
</head>
<body>
<p><a href="./">atlantis</a></p>
<h1><code>{e(lock_id)}</code> <span class="badge">Locked</span></h1>
<dl>
<dt>Repo Owner</dt><dd><code>{e(repo_owner)}</code></dd>
<dt>Repo Name</dt><dd><code>{e(repo_name)}</code></dd>
<dt>Pull Request Link</dt><dd>{link}</dd>
<dt>Locked By</dt><dd><code>{e(locked_by)}</code></dd>
<dt>Workspace</dt><dd><code>{e(parts.workspace)}</code></dd>
<dt>Path</dt><dd><code>{e(parts.path)}</code></dd>
<dt>Project</dt><dd><code>{e(parts.project)}</code></dd>
<dt>Locked At</dt><dd><code>{e(go_time(grant.acquired_at))}</code></dd>
<dt>Fencing Token</dt><dd><code>{grant.token}</code></dd>
<dt>Lease</dt><dd>{e(lease)}</dd>
<dt>Served By</dt><dd>the enhanced locking engine (atlantis-lock-sidecar)</dd>
</dl>
<h2>Queue</h2>
{queue}
<button id="discardPlanUnlock" data-lock-id="{e(lock_id)}"
 data-unlock-url="{e(unlock_url(lock_id))}">Discard Plan &amp; Unlock</button>
<script>{_SCRIPT}</script>
</body>
</html>
"""
