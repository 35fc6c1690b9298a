"""GET /metrics for Prometheus: off unless ``BRIDGE_METRICS_TOKEN`` is set, then that bearer token only."""

from __future__ import annotations

import hmac

from apiflask import APIBlueprint
from flask import Response, current_app, request

from bridge.api.deps import state
from bridge.metrics import metrics_response
from bridge.problems import INVALID_TOKEN, problem

bp = APIBlueprint("metrics", __name__, tag="health")


@bp.get("/metrics")
@bp.output({}, content_type="text/plain", description="Prometheus text exposition (OpenMetrics on request).")
@bp.doc(summary="Prometheus metrics", description="Queue depth, jobs by status, failures by reason, worker "
        "heartbeat age and storage free bytes. Needs `Authorization: Bearer <BRIDGE_METRICS_TOKEN>`.",
        responses={401: "Wrong or missing metrics token", 404: "Metrics are off (no BRIDGE_METRICS_TOKEN)"})
def metrics() -> Response:
    token = state().settings.metrics_token
    if token is None:
        return problem(404, None, "There is no resource at this URL.")
    sent = request.headers.get("Authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        return problem(401, None, "send the metrics token as 'Authorization: Bearer <token>'", INVALID_TOKEN,
                       headers={"WWW-Authenticate": 'Bearer realm="metrics"'}, code="bad_metrics_token")
    body, content_type = metrics_response(current_app.extensions["bridge_metrics"], request.headers.get("Accept"))
    return Response(body, content_type=content_type)
