#!/usr/bin/env python3
# hubserver.py - a local stand-in for the Hugging Face Hub, for tests.
#
# Two real HTTP/1.1 servers on 127.0.0.1: the "hub" (API + resolve) and a
# "CDN" on another port that serves LFS content by sha256 and refuses any
# request carrying Authorization (a token must never reach it).
#
#   python3 tests/hubserver.py --repos DIR --port-file FILE [--page-size N]
#
# Repos: every directory under DIR/{models,datasets,spaces}/ holding a
# repo.json is a repo (its path below the type folder is the repo id); each
# other sub-directory of it is a branch whose files are the repo content.
# repo.json keys (all optional): "private": bool, "gated": "manual"|false,
# "access": [tokens that may read], "lfs_min": files of at least this many
# bytes are LFS (default 1024; *.safetensors and *.bin always are),
# "redirect_small": true = small files answer 307 to /api/resolve-cache/.
# Valid tokens: --tokens (default hf_good,hf_noaccess).  --tls CERT KEY serves
# HTTPS on both ports.
#
# Test control (not logged), all GET on the hub port:
#   /_test/fault?kind=K&where=cdn|resolve|api|any&file=GLOB&method=GET|HEAD|*
#               &count=N (-1 = always)&arg=A&retry_after=S&code=C     add a fault
#   /_test/stale?repo=ID&type=model&branch=B&count=N (-1 = always)&resolve=0|1
#               &tree=list|gone
#               pin B's current commit as a stale answer, then move the branch by
#               changing its files (a force-push): /api/.../revision/B answers the
#               pinned (old) commit and its siblings for the next N calls;
#               /resolve/<old>/<file> answers 404 EntryNotFound (the old commit's
#               files are gone); /api/.../tree/<old> lists the old files (tree=list,
#               the default) or answers 404 RevisionNotFound (tree=gone); with
#               resolve=1, /resolve/B/<file> is stale too (404 EntryNotFound with
#               X-Repo-Commit <old>, each such answer takes one of the N)
#   /_test/reset    drop faults, stale pins and the request log
#   /_test/log      request log, one JSON object per line
# Fault kinds: status (answer status arg, with Retry-After, and X-Error-Code
# code=C if given), ratelimit (429
# with RateLimit t=arg), drop (close the connection after arg body bytes),
# corrupt (flip a byte of the body), slow (sleep arg s per 64 KiB),
# norange (ignore Range), expire (CDN answers 403), html (CDN answers 200 with a
# login page, as a captive portal).
import argparse
import fnmatch
import hashlib
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class State:
    def __init__(self, root, tokens, page_size):
        self.root = root
        self.tokens = set(tokens)
        self.page_size = page_size
        self.lock = threading.Lock()
        self.faults = []
        self.stale = []   # pinned stale commits (see /_test/stale)
        self.log = []
        self.hash_cache = {}
        self.main_port = 0
        self.cdn_port = 0
        self.scheme = "http"

    # ---- repos
    def find_repo(self, rtype, rid):
        d = os.path.join(self.root, rtype + "s", rid)
        cfg = os.path.join(d, "repo.json")
        if ".." in rid.split("/") or not os.path.isfile(cfg):
            return None
        with open(cfg) as f:
            c = json.load(f)
        c["dir"] = d
        c["id"] = rid
        c["type"] = rtype
        return c

    def file_info(self, path, lfs_min):
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self.hash_cache.get(key)
        if hit:
            return hit
        sha1 = hashlib.sha1(b"blob %d\0" % st.st_size)
        sha256 = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                sha1.update(b)
                sha256.update(b)
        name = os.path.basename(path)
        lfs = st.st_size >= lfs_min or name.endswith((".safetensors", ".bin"))
        info = {"size": st.st_size, "sha1": sha1.hexdigest(), "sha256": sha256.hexdigest(),
                "lfs": lfs, "path": path}
        if lfs:
            ptr = ("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
                   % (info["sha256"], st.st_size)).encode()
            info["pointer_oid"] = hashlib.sha1(b"blob %d\0" % len(ptr) + ptr).hexdigest()
            info["pointer_size"] = len(ptr)
        with self.lock:
            self.hash_cache[key] = info
        return info

    def branches(self, repo):
        return sorted(e for e in os.listdir(repo["dir"])
                      if os.path.isdir(os.path.join(repo["dir"], e)))

    def files(self, repo, branch):
        base = os.path.join(repo["dir"], branch)
        out = []
        for dp, dn, fn in os.walk(base):
            dn.sort()
            for f in sorted(fn):
                full = os.path.join(dp, f)
                out.append(os.path.relpath(full, base).replace(os.sep, "/"))
        return sorted(out)

    def commit(self, repo, branch):
        h = hashlib.sha1(("commit %s %s\n" % (repo["id"], branch)).encode())
        lfs_min = repo.get("lfs_min", 1024)
        for p in self.files(repo, branch):
            info = self.file_info(os.path.join(repo["dir"], branch, p), lfs_min)
            h.update(("%s %s\n" % (p, info["sha1"])).encode())
        return h.hexdigest()

    def entries(self, repo, branch):
        """Every tree entry (files and directories) of a branch, sorted."""
        lfs_min = repo.get("lfs_min", 1024)
        entries = []
        dirs = set()
        for p in self.files(repo, branch):
            segs = p.split("/")
            for i in range(1, len(segs)):
                dirs.add("/".join(segs[:i]))
            info = self.file_info(os.path.join(repo["dir"], branch, p), lfs_min)
            e = {"type": "file", "size": info["size"], "path": p}
            if info["lfs"]:
                e["oid"] = info["pointer_oid"]
                e["lfs"] = {"oid": info["sha256"], "size": info["size"],
                            "pointerSize": info["pointer_size"]}
            else:
                e["oid"] = info["sha1"]
            entries.append(e)
        for d in dirs:
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
        entries.sort(key=lambda e: e["path"])
        return entries

    # ---- stale pins (force-push emulation)
    def stale_pin(self, repo, rev):
        """The pin of repo whose old commit is rev, or None."""
        with self.lock:
            for s in self.stale:
                if s["type"] == repo["type"] and s["id"] == repo["id"] and s["commit"] == rev:
                    return s
        return None

    def take_stale(self, repo, branch, resolve):
        """The pin answering for branch now (one of its count taken), or None."""
        with self.lock:
            for s in self.stale:
                if (s["type"] != repo["type"] or s["id"] != repo["id"] or s["branch"] != branch
                        or s["count"] == 0 or (resolve and not s["resolve"])):
                    continue
                if s["count"] > 0:
                    s["count"] -= 1
                return s
        return None

    def resolve_rev(self, repo, rev):
        """(branch, commit) or None."""
        for b in self.branches(repo):
            c = self.commit(repo, b)
            if rev == b or rev == c:
                return b, c
        return None

    def by_sha256(self, sha):
        for t in TYPES:
            top = os.path.join(self.root, t)
            for dp, dn, fn in os.walk(top):
                for f in fn:
                    if f == "repo.json":
                        continue
                    full = os.path.join(dp, f)
                    try:
                        info = self.file_info(full, 0)
                    except OSError:
                        continue
                    if info["sha256"] == sha:
                        return info
        return None

    # ---- faults
    def take_fault(self, where, file, method):
        with self.lock:
            for f in self.faults:
                if f["count"] == 0:
                    continue
                if f["where"] not in ("any", where):
                    continue
                if f["method"] not in ("*", method):
                    continue
                if not fnmatch.fnmatchcase(file or "", f["file"]):
                    continue
                if f["count"] > 0:
                    f["count"] -= 1
                return dict(f)
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1"
    is_cdn = False

    def log_message(self, fmt, *args):
        pass

    @property
    def st(self):
        return self.server.state

    def record(self, status, extra=None):
        auth = self.headers.get("Authorization")
        e = {"port": "cdn" if self.is_cdn else "hub", "method": self.command,
             "path": self.path, "auth": auth, "range": self.headers.get("Range"),
             "status": status, "ua": self.headers.get("User-Agent")}
        if extra:
            e.update(extra)
        with self.st.lock:
            self.st.log.append(e)

    def send(self, status, headers=None, body=b"", extra=None):
        self.record(status, extra)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def error(self, status, code=None, message=None, headers=None):
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        if message:
            h["X-Error-Message"] = message
        h["X-Request-Id"] = "Root=1-test-%d" % int(time.time() * 1000)
        h["Content-Type"] = "application/json"
        self.send(status, h, json.dumps({"error": message or code or "error"}).encode())

    def fault_status(self, f):
        if f["kind"] == "status":
            h = {}
            if f.get("retry_after") is not None:
                h["Retry-After"] = str(f["retry_after"])
            self.error(int(f["arg"] or 500), f.get("code"), message="injected", headers=h)
            return True
        if f["kind"] == "ratelimit":
            t = int(f["arg"] or 1)
            self.error(429, message="rate limited", headers={
                "RateLimit": '"api";r=0;t=%d' % t,
                "RateLimit-Policy": '"fixed window";"api";q=500;w=300'})
            return True
        return False

    # ---- auth
    def token(self):
        a = self.headers.get("Authorization") or ""
        return a[7:] if a.startswith("Bearer ") else None

    def check_repo(self, rtype, rid, content):
        """Repo config, or None after an error answer.  content: resolve."""
        repo = self.st.find_repo(rtype, rid)
        tok = self.token()
        if tok is not None and tok not in self.st.tokens:
            self.error(401, message="Invalid credentials in Authorization header")
            return None
        if repo is None or (repo.get("private") and tok not in repo.get("access", [])):
            if tok is None:
                self.error(401, "RepoNotFound", "Invalid username or password.")
            else:
                self.error(404, "RepoNotFound", "Repository not found")
            return None
        if content and repo.get("gated") and tok not in repo.get("access", []):
            if tok is None:
                self.error(401, "GatedRepo",
                           "Access to model %s is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in." % rid)
            else:
                self.error(403, "GatedRepo",
                           "Access to model %s is restricted and you are not in the "
                           "authorized list. Visit https://huggingface.co/%s to ask for "
                           "access." % (rid, rid))
            return None
        return repo

    # ---- routing
    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def route(self):
        try:
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            parts = u.path.split("/")[1:]
            if self.is_cdn:
                return self.cdn(parts, q)
            if parts[:1] == ["_test"]:
                return self.control(parts[1] if len(parts) > 1 else "", q)
            if parts[:1] == ["api"]:
                return self.api(parts[1:], q)
            return self.resolve(parts, q)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def control(self, what, q):
        g = lambda k, d=None: q.get(k, [d])[0]
        if what == "fault":
            f = {"kind": g("kind"), "where": g("where", "any"), "file": g("file", "*"),
                 "method": g("method", "GET"), "count": int(g("count", "1")),
                 "arg": g("arg"), "retry_after": g("retry_after"), "code": g("code")}
            with self.st.lock:
                self.st.faults.append(f)
            body = b"ok\n"
        elif what == "stale":
            rtype = g("type", "model")
            repo = self.st.find_repo(rtype, g("repo", ""))
            branch = g("branch", "main")
            if repo is None or branch not in self.st.branches(repo):
                body = b"no such repo or branch\n"
            else:
                pin = {"type": rtype, "id": repo["id"], "branch": branch,
                       "commit": self.st.commit(repo, branch),
                       "files": self.st.files(repo, branch),
                       "entries": self.st.entries(repo, branch),
                       "count": int(g("count", "1")), "resolve": g("resolve", "0") == "1",
                       "tree": g("tree", "list")}
                with self.st.lock:
                    self.st.stale.append(pin)
                body = (pin["commit"] + "\n").encode()
        elif what == "reset":
            with self.st.lock:
                self.st.faults.clear()
                self.st.stale.clear()
                self.st.log.clear()
            body = b"ok\n"
        elif what == "log":
            with self.st.lock:
                body = "".join(json.dumps(e) + "\n" for e in self.st.log).encode()
        else:
            body = b"?\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def api(self, parts, q):
        if not parts:
            return self.error(404, message="no route")
        if parts[0] == "resolve-cache":
            return self.resolve_cache(parts[1:])
        rtype = TYPES.get(parts[0])
        if not rtype:
            return self.error(404, message="no route")
        f = self.st.take_fault("api", None, self.command)
        if f and self.fault_status(f):
            return
        rest = [urllib.parse.unquote(p) for p in parts[1:]]
        # pick the longest id that exists, else the 2-part form for errors
        rid, tail = None, None
        for n in (2, 1):
            if len(rest) >= n and self.st.find_repo(rtype, "/".join(rest[:n])):
                rid, tail = "/".join(rest[:n]), rest[n:]
                break
        if rid is None:
            rid, tail = "/".join(rest[:2]), rest[2:]
        repo = self.check_repo(rtype, rid, False)
        if repo is None:
            return
        if not tail or tail[0] == "revision":
            rev = tail[1] if len(tail) > 1 else "main"
            return self.info(repo, rev, q)
        if tail[0] == "tree":
            rev = tail[1] if len(tail) > 1 else "main"
            sub = "/".join(tail[2:])
            return self.tree(repo, rev, sub, q)
        if tail[0] == "refs":
            br = [{"name": b, "ref": "refs/heads/" + b, "targetCommit": self.st.commit(repo, b)}
                  for b in self.st.branches(repo)]
            return self.send(200, {"Content-Type": "application/json"},
                             json.dumps({"branches": br, "tags": [], "converts": []}).encode())
        return self.error(404, message="no route")

    def rev_or_error(self, repo, rev):
        r = self.st.resolve_rev(repo, rev)
        if r is None:
            self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        return r

    def info(self, repo, rev, q):
        pin = self.st.take_stale(repo, rev, False)
        if pin is not None:
            body = {"id": repo["id"], "sha": pin["commit"], "private": bool(repo.get("private")),
                    "gated": repo.get("gated", False), "disabled": False,
                    "siblings": [{"rfilename": p} for p in pin["files"]]}
            return self.send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())
        r = self.rev_or_error(repo, rev)
        if r is None:
            return
        branch, commit = r
        blobs = q.get("blobs", ["false"])[0].lower() == "true"
        sib = []
        lfs_min = repo.get("lfs_min", 1024)
        for p in self.st.files(repo, branch):
            e = {"rfilename": p}
            if blobs:
                info = self.st.file_info(os.path.join(repo["dir"], branch, p), lfs_min)
                e["size"] = info["size"]
                if info["lfs"]:
                    e["blobId"] = info["pointer_oid"]
                    e["lfs"] = {"sha256": info["sha256"], "size": info["size"],
                                "pointerSize": info["pointer_size"]}
                else:
                    e["blobId"] = info["sha1"]
            sib.append(e)
        body = {"_id": "x" * 24, "id": repo["id"], "author": repo["id"].split("/")[0],
                "sha": commit, "private": bool(repo.get("private")),
                "gated": repo.get("gated", False), "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0,
                "likes": 0, "siblings": sib}
        self.send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def tree(self, repo, rev, sub, q):
        pin = self.st.stale_pin(repo, rev)
        if pin is not None and pin["tree"] == "gone":
            return self.error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
        if pin is not None:
            entries = pin["entries"]
        else:
            r = self.rev_or_error(repo, rev)
            if r is None:
                return
            entries = self.st.entries(repo, r[0])
        if sub:
            entries = [e for e in entries if e["path"].startswith(sub + "/")]
        cursor = int(q.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + self.st.page_size]
        h = {"Content-Type": "application/json"}
        if cursor + self.st.page_size < len(entries):
            u = urllib.parse.urlsplit(self.path)
            qq = {k: v[0] for k, v in q.items()}
            qq["cursor"] = str(cursor + self.st.page_size)
            nxt = "%s://127.0.0.1:%d%s?%s" % (self.st.scheme, self.st.main_port, u.path,
                                                urllib.parse.urlencode(qq))
            h["Link"] = '<%s>; rel="next"' % nxt
        self.send(200, h, json.dumps(page).encode())

    def resolve(self, parts, q):
        # /[datasets/|spaces/]<id...>/resolve/<rev>/<path...>
        rtype = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            rtype = TYPES[parts[0]]
            parts = parts[1:]
        if "resolve" not in parts:
            return self.error(404, message="no route")
        i = parts.index("resolve")
        rid = "/".join(parts[:i])
        if len(parts) < i + 3:
            return self.error(404, message="no route")
        rev = urllib.parse.unquote(parts[i + 1])
        path = urllib.parse.unquote("/".join(parts[i + 2:]))
        f = self.st.take_fault("resolve", path, self.command)
        if f and self.fault_status(f):
            return
        repo = self.check_repo(rtype, rid, True)
        if repo is None:
            return
        pin = self.st.stale_pin(repo, rev) or self.st.take_stale(repo, rev, True)
        if pin is not None:
            # the old commit's files are gone after the force-push
            return self.error(404, "EntryNotFound", "%s does not exist on \"%s\"" % (path, rev),
                              headers={"X-Repo-Commit": pin["commit"]})
        r = self.rev_or_error(repo, rev)
        if r is None:
            return
        branch, commit = r
        full = os.path.join(repo["dir"], branch, path)
        if ".." in path.split("/") or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "%s does not exist on \"%s\"" % (path, rev),
                              headers={"X-Repo-Commit": commit})
        info = self.st.file_info(full, repo.get("lfs_min", 1024))
        if info["lfs"]:
            loc = "%s://127.0.0.1:%d/cdn/%s?X-Amz-Expires=3600&X-Amz-Signature=abc&name=%s" % (
                self.st.scheme, self.st.cdn_port, info["sha256"],
                urllib.parse.quote(os.path.basename(path)))
            body = b"Found. Redirecting to " + loc.encode()
            return self.send(302, {"Location": loc, "X-Repo-Commit": commit,
                                   "X-Linked-Etag": '"%s"' % info["sha256"],
                                   "X-Linked-Size": str(info["size"]),
                                   "ETag": '"%s"' % info["pointer_oid"],
                                   "Content-Type": "text/plain"}, body)
        if repo.get("redirect_small"):
            loc = "/api/resolve-cache/%ss/%s/%s/%s?etag=%%22%s%%22" % (
                rtype, rid, commit, urllib.parse.quote(path), info["sha1"])
            return self.send(307, {"Location": loc, "X-Repo-Commit": commit,
                                   "Content-Type": "text/plain"}, b"Temporary Redirect")
        self.content(info, {"ETag": '"%s"' % info["sha1"], "X-Repo-Commit": commit}, path,
                     "resolve")

    def resolve_cache(self, parts):
        # resolve-cache/<types>/<id...>/<commit>/<path...>
        if len(parts) < 4 or parts[0] not in TYPES:
            return self.error(404, message="no route")
        rtype = TYPES[parts[0]]
        rest = parts[1:]
        for n in (2, 1):
            rid = "/".join(rest[:n])
            repo = self.st.find_repo(rtype, rid)
            if repo and len(rest) > n + 1:
                commit = rest[n]
                path = urllib.parse.unquote("/".join(rest[n + 1:]))
                break
        else:
            return self.error(404, "RepoNotFound", "Repository not found")
        repo = self.check_repo(rtype, rid, True)
        if repo is None:
            return
        r = self.rev_or_error(repo, commit)
        if r is None:
            return
        full = os.path.join(repo["dir"], r[0], path)
        if ".." in path.split("/") or not os.path.isfile(full):
            return self.error(404, "EntryNotFound", "not found", headers={"X-Repo-Commit": commit})
        info = self.st.file_info(full, repo.get("lfs_min", 1024))
        self.content(info, {"ETag": '"%s"' % info["sha1"], "X-Repo-Commit": commit}, path,
                     "resolve")

    def cdn(self, parts, q):
        if self.headers.get("Authorization"):
            self.record(400, {"violation": "authorization sent to the CDN"})
            body = b"Only one auth mechanism allowed"
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        if len(parts) != 2 or parts[0] != "cdn":
            return self.error(404, message="no route")
        info = self.st.by_sha256(parts[1])
        if info is None:
            return self.error(404, message="no such object")
        name = urllib.parse.unquote(q.get("name", [""])[0])
        f = self.st.take_fault("cdn", name, self.command)
        if f and f["kind"] == "expire":
            return self.error(403, message="Request has expired")
        if f and f["kind"] == "html":
            return self.send(200, {"Content-Type": "text/html"},
                             b"<!DOCTYPE html><html><body>Please log in</body></html>\n")
        if f and self.fault_status(f):
            return
        self.content(info, {"ETag": '"%s"' % info["sha256"]}, name, "cdn", f)

    def content(self, info, headers, name, where, fault=None):
        if fault is None:
            fault = self.st.take_fault(where, name, self.command)
            if fault and self.fault_status(fault):
                return
        size = info["size"]
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and not (fault and fault["kind"] == "norange"):
            spec = rng.strip()
            ok = spec.startswith("bytes=") and "," not in spec
            if ok:
                a, _, b = spec[6:].partition("-")
                try:
                    if a == "":
                        n = int(b)
                        start, end = max(0, size - n), size - 1
                    else:
                        start = int(a)
                        end = int(b) if b else size - 1
                        end = min(end, size - 1)
                except ValueError:
                    ok = False
            if ok and start >= size:
                return self.send(416, {"Content-Range": "bytes */%d" % size})
            if ok and start <= end:
                status = 206
            else:
                start, end = 0, size - 1
        h = dict(headers)
        h["Accept-Ranges"] = "bytes"
        h["Content-Type"] = "application/octet-stream"
        if status == 206:
            h["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
        length = end - start + 1 if size else 0
        self.record(status, {"fault": fault["kind"] if fault else None, "bytes": length})
        self.send_response(status)
        for k, v in h.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        limit = length
        kind = fault["kind"] if fault else None
        if kind == "drop":
            limit = min(length, int(fault["arg"] or 0))
        self.wfile.flush()
        sock = self.connection
        with open(info["path"], "rb") as fh:
            if (kind is None or kind == "norange") and self.st.scheme == "http":
                off, left = start, limit
                while left > 0:
                    n = os.sendfile(sock.fileno(), fh.fileno(), off, min(left, 1 << 24))
                    if n <= 0:
                        break
                    off += n
                    left -= n
            else:
                fh.seek(start)
                sent = 0
                while sent < limit:
                    b = fh.read(min(65536, limit - sent))
                    if not b:
                        break
                    if kind == "corrupt" and sent == 0:  # noqa: flipped first byte
                        b = bytes([b[0] ^ 0xFF]) + b[1:]
                    if kind == "slow":
                        time.sleep(float(fault["arg"] or 0.1))
                    sock.sendall(b)
                    sent += len(b)
        if kind == "drop":
            self.close_connection = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class CdnHandler(Handler):
    is_cdn = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repos", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--tokens", default="hf_good,hf_noaccess")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="serve HTTPS on both ports with this certificate")
    a = ap.parse_args()
    st = State(os.path.abspath(a.repos), a.tokens.split(","), a.page_size)
    hub = Server(("127.0.0.1", 0), Handler)
    cdn = Server(("127.0.0.1", 0), CdnHandler)
    hub.state = cdn.state = st
    if a.tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        hub.socket = ctx.wrap_socket(hub.socket, server_side=True)
        cdn.socket = ctx.wrap_socket(cdn.socket, server_side=True)
        st.scheme = "https"
    st.main_port = hub.server_address[1]
    st.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (st.main_port, st.cdn_port))
    os.replace(tmp, a.port_file)
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
