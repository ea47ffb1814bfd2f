"""
The floor: the least a gateway on this stack can do, a Klein route that relays a chat completion
through treq to the provider and returns its answer (no auth, agents, sessions or SSE parsing).

Run: ``python -m bench.floor --upstream http://127.0.0.1:N/v1 [--port 0]``;
it prints ``listening <port>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from klein import Klein
from twisted.internet import reactor as _reactor
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from openclaw_twisted.gateway import http_client

#: The global reactor, untyped: the bench is a process edge, like the CLI.
reactor: Any = _reactor
JSON = Headers({b"content-type": [b"application/json"]})


def app(upstream: str) -> Klein:
    """The proxy, with the gateway's own HTTP client (same pool settings)."""
    klein = Klein()
    http = http_client(reactor)
    url = upstream.rstrip("/") + "/chat/completions"

    @klein.route("/v1/chat/completions", methods=["POST"])
    async def completions(request: IRequest) -> bytes:
        body = request.content.read()
        response = await http.post(url, data=body, headers=JSON)
        answer: bytes = await response.content()
        request.setResponseCode(response.code)
        request.setHeader(b"content-type", b"application/json")
        return answer

    return klein


class QuietSite(Site):
    """A plain ``Site``, without the per-request access log (as the gateway's) nor form parsing."""

    noisy = False

    def log(self, request: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    options = parser.parse_args(argv)
    site = QuietSite(app(options.upstream).resource(), parsePOSTFormSubmission=False)
    port = reactor.listenTCP(options.port, site, backlog=4096, interface="127.0.0.1")
    sys.stdout.write(f"listening {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
