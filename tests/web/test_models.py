"""GET /v1/models and /v1/models/{id} (CONTRACT §6): same enablement and auth as chat."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .memory import TOKEN, Response, make_gateway, post


def model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "openclaw"}


class ModelsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = make_gateway(self.mktemp())

    def get(self, path: str, **kwargs: Any) -> Response:
        return post(self.gateway, None, method="GET", path=path, **kwargs)

    def test_list(self) -> None:
        r = self.get("/v1/models")
        self.assertEqual(r.status, 200)
        self.assertEqual(
            r.json(),
            {
                "object": "list",
                "data": [
                    model("openclaw"),
                    model("openclaw/default"),
                    model("openclaw/main"),
                    model("openclaw/beta"),
                ],
            },
        )

    def test_one(self) -> None:
        for model_id in ("openclaw", "openclaw/default", "openclaw/beta"):
            r = self.get(f"/v1/models/{model_id}")
            self.assertEqual((r.status, r.json()), (200, model(model_id)))
        r = self.get("/v1/models/openclaw%2Fbeta")
        self.assertEqual(r.json(), model("openclaw/beta"))

    def test_unknown_is_404_model_not_found(self) -> None:
        r = self.get("/v1/models/gpt-4o")
        self.assertEqual(r.status, 404)
        self.assertEqual(
            r.json(),
            {
                "error": {
                    "message": "The model 'gpt-4o' does not exist.",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
        )

    def test_auth_and_method(self) -> None:
        for path in ("/v1/models", "/v1/models/openclaw"):
            self.assertEqual(self.get(path, token=None).status, 401)
            self.assertEqual(self.get(path, token="nope").status, 401)
            r = post(self.gateway, {}, path=path, token=None)
            self.assertEqual((r.status, r.header("allow")), (405, "GET, HEAD"))
            r = post(self.gateway, None, method="HEAD", path=path, token=TOKEN)
            self.assertEqual(r.status, 200)
