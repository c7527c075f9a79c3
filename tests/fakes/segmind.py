"""A loopback fake of Segmind's API: v2 submit/status/result, v1 blocking, credits, files.

It checks requests the way the documentation describes them and can be told to fail in
every documented way. Tests and benchmarks read its counters to see what reached it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import serve_on_loopback
from .models3d import sam3d_glb_bytes, splat_ply_bytes

API_KEY = "sk-test-5e9a1c0ffee"
MODEL = "sam-3d-objects"
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Bad gateway</h1></body></html>"


@dataclass
class Behaviour:
    """What the fake does; tests change it between and during jobs."""

    submit_error: tuple[int, Any] | None = None  # (status, body dict or bytes) on submit
    submit_delay_s: float = 0.0  # a slow submit: the request id comes this late
    # A network that fails after the body went out (not a Segmind rule: a failure to inject).
    drop_after_submit: bool = False  # takes the job (and bills it), then the connection breaks
    html_error_status: int | None = None  # submit answers an HTML page with this status
    rate_limited: int = 0  # the next N API calls answer 429
    reset_in_s: float = 0.3  # for x-rate-limit-reset-at-utc
    polls_before_done: int = 2  # status answers QUEUED, then PROCESSING..., then COMPLETED
    complete_after_s: float = 0.0  # or: done once this much time has passed since submit
    # A test's control, not a Segmind rule: jobs with these seeds stay PROCESSING.
    held_seeds: set[int] = field(default_factory=set)
    poll_delay_s: float = 0.0  # a slow status endpoint
    fail_message: str | None = None  # the job ends FAILED (HTTP 422)
    expired: bool = False  # status and result answer 404 (records expire after ~1 h)
    status_errors: int = 0  # the next N status calls answer 502
    truncate_downloads: int = 0  # the next N file downloads stop half way
    file_status: int | None = None  # downloads answer this status (e.g. 404: expired link)
    result_form: str = "urls"  # urls | raw_glb | raw_ply | zip | base64 | nested
    cost: str = "0.065"
    remaining_credits: float = 9.87
    include_splat: bool = True
    # A misbehaving or hostile upstream (issue 14), injected by tests; none of these is a
    # documented Segmind behaviour, and none loosens a check the fake makes.
    status_redirect: str | None = None  # the status endpoint answers 302 to this URL
    status_padding: int = 0  # bytes of junk in every status answer (a runaway upstream)
    file_dribble_s: float = 0.0  # files arrive a byte at a time, this long between bytes
    result_extra: dict[str, Any] = field(default_factory=dict)  # more keys in the result JSON
    file_base: str | None = None  # the result names its files under this origin instead
    raw_result: bytes | None = None  # the result endpoint answers exactly these bytes (JSON)


@dataclass
class Counters:
    submits: int = 0
    v1_calls: int = 0
    polls: int = 0
    results: int = 0
    downloads: int = 0
    rate_limited: int = 0
    payloads: list[dict] = field(default_factory=list)
    bad_keys: int = 0


class FakeSegmind:
    def __init__(self, behaviour: Behaviour | None = None, api_key: str = API_KEY):
        self.behaviour = behaviour or Behaviour()
        self.api_key = api_key
        self.counters = Counters()
        self.glb = sam3d_glb_bytes()
        self.ply = splat_ply_bytes()
        self.jobs: dict[str, dict] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._next_id = 0

    async def __aenter__(self) -> FakeSegmind:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(f"/v2/{MODEL}", self.submit_v2)
        app.router.add_get("/v2/requests/{id}/status", self.status)
        app.router.add_get("/v2/requests/{id}", self.result)
        app.router.add_post(f"/v1/{MODEL}", self.run_v1)
        app.router.add_get("/v1/get-user-credits", self.credits)
        app.router.add_get("/files/{name}", self.file)
        self._runner, self.url = await serve_on_loopback(app, access_log=None)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner:
            await self._runner.cleanup()

    # -- checks common to every API call ----------------------------------------------------

    def _gate(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            self.counters.bad_keys += 1
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self.behaviour.rate_limited > 0:
            self.behaviour.rate_limited -= 1
            self.counters.rate_limited += 1
            reset = time.time() + self.behaviour.reset_in_s
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(reset))
            stamp += f".{int((reset % 1) * 1000):03d}Z"
            return web.json_response(
                {"error": "Rate limit exceeded"},
                status=429,
                headers={"x-rate-limit-reset-at-utc": stamp},
            )
        return None

    @staticmethod
    def _check_payload(payload: Any) -> str | None:
        """The documented body; returns what is wrong, as Segmind's 400 would."""
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            return "image is required"
        try:
            base64.b64decode(payload["image"], validate=True)
        except (binascii.Error, ValueError):
            return "image must be a URL or base64"
        seed = payload.get("seed", 123)
        if not isinstance(seed, int) or not 0 <= seed <= 1_000_000:
            return "seed must be an integer between 0 and 1000000"
        box = payload.get("bounding_box")
        if box is not None and not re.fullmatch(r"\[\d+, \d+, \d+, \d+\]", str(box)):
            return "bounding_box must be a string like '[x1, y1, x2, y2]'"
        points = payload.get("point_coords")
        if points is not None and not re.fullmatch(r"\[(\[\d+, \d+\](, )?)+\]", str(points)):
            return "point_coords must be a string like '[[x, y], ...]'"
        return None

    def _submit_refusal(self) -> web.Response | None:
        b = self.behaviour
        if b.html_error_status:
            return web.Response(
                body=HTML_PAGE, status=b.html_error_status, content_type="text/html"
            )
        if b.submit_error:
            status, body = b.submit_error
            if isinstance(body, bytes):
                return web.Response(body=body, status=status)
            return web.json_response(body, status=status)
        return None

    # -- v2 ---------------------------------------------------------------------------------

    async def submit_v2(self, request: web.Request) -> web.Response:
        self.counters.submits += 1
        if self.behaviour.submit_delay_s:
            await asyncio.sleep(self.behaviour.submit_delay_s)
        gate = self._gate(request)
        if gate is not None:
            return gate
        refusal = self._submit_refusal()
        if refusal is not None:
            return refusal
        payload = await request.json()
        problem = self._check_payload(payload)
        if problem:
            return web.json_response({"error": problem}, status=400)
        self.counters.payloads.append(payload)
        self._next_id += 1
        job_id = f"req-{self._next_id:05d}"
        self.jobs[job_id] = {"created": time.monotonic(), "polls": 0, "seed": payload.get("seed")}
        if self.behaviour.drop_after_submit:
            assert request.transport is not None
            request.transport.close()  # the answer never reaches the bot
            raise web.HTTPInternalServerError()
        return web.json_response(
            {
                "request_id": job_id,
                "status": "QUEUED",
                "status_url": f"{self.url}/v2/requests/{job_id}/status",
                "response_url": f"{self.url}/v2/requests/{job_id}",
            }
        )

    def _job_state(self, job: dict) -> str:
        b = self.behaviour
        if job.get("seed") in b.held_seeds:
            done = False
        elif b.complete_after_s:
            done = time.monotonic() - job["created"] >= b.complete_after_s
        else:
            done = job["polls"] > b.polls_before_done
        if not done:
            return "QUEUED" if job["polls"] <= 1 else "PROCESSING"
        return "FAILED" if b.fail_message else "COMPLETED"

    async def status(self, request: web.Request) -> web.Response:
        self.counters.polls += 1
        gate = self._gate(request)
        if gate is not None:
            return gate
        if self.behaviour.status_redirect:
            raise web.HTTPFound(self.behaviour.status_redirect)
        if self.behaviour.poll_delay_s:
            await asyncio.sleep(self.behaviour.poll_delay_s)
        if self.behaviour.status_errors > 0:
            self.behaviour.status_errors -= 1
            return web.Response(body=HTML_PAGE, status=502, content_type="text/html")
        job = self.jobs.get(request.match_info["id"])
        if job is None or self.behaviour.expired:
            return web.json_response({"error": "Request not found"}, status=404)
        job["polls"] += 1
        state = self._job_state(job)
        if state == "FAILED":
            return web.json_response(
                {"status": "FAILED", "error": self.behaviour.fail_message}, status=422
            )
        body: dict[str, Any] = {"request_id": request.match_info["id"], "status": state}
        if state == "COMPLETED":
            body["metrics"] = self._metrics()
        if self.behaviour.status_padding:
            body["log"] = "x" * self.behaviour.status_padding
        return web.json_response(body)

    async def result(self, request: web.Request) -> web.Response:
        self.counters.results += 1
        gate = self._gate(request)
        if gate is not None:
            return gate
        job = self.jobs.get(request.match_info["id"])
        if job is None or self.behaviour.expired:
            return web.json_response({"error": "Request not found"}, status=404)
        if self._job_state(job) != "COMPLETED":
            return web.json_response({"error": "Request not completed"}, status=400)
        if self.behaviour.raw_result is not None:
            return web.Response(body=self.behaviour.raw_result, content_type="application/json")
        return self._result_response({"x-cost": self.behaviour.cost})

    def _metrics(self) -> dict:
        return {
            "cost": float(self.behaviour.cost),
            "remaining_credits": self.behaviour.remaining_credits,
        }

    def _result_response(self, headers: dict[str, str]) -> web.Response:
        b = self.behaviour
        headers = {**headers, "x-remaining-credits": str(b.remaining_credits)}
        if b.result_form == "raw_glb":
            return web.Response(body=self.glb, content_type="model/gltf-binary", headers=headers)
        if b.result_form == "raw_ply":
            return web.Response(
                body=self.ply, content_type="application/octet-stream", headers=headers
            )
        if b.result_form == "zip":
            return web.Response(
                body=self.zip_bytes(), content_type="application/zip", headers=headers
            )
        if b.result_form == "base64":
            body: dict[str, Any] = {"model_glb": base64.b64encode(self.glb).decode()}
        elif b.result_form == "nested":
            body = {
                "output": {"model_glb": f"{self.url}/files/model.glb"},
                "individual_meshes": [f"{self.url}/files/part0.glb"],
            }
        else:
            files = b.file_base or self.url
            body = {"model_glb": f"{files}/files/model.glb"}
            if b.include_splat:
                body["gaussian_splat"] = f"{files}/files/splat.ply"
        body.update(b.result_extra)
        body["metrics"] = self._metrics()
        return web.json_response(body, headers=headers)

    def zip_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("result/model.glb", self.glb)
            zf.writestr("result/splat.ply", self.ply)
            zf.writestr("result/notes.txt", "artifacts")
        return buffer.getvalue()

    # -- v1 ---------------------------------------------------------------------------------

    async def run_v1(self, request: web.Request) -> web.Response:
        self.counters.v1_calls += 1
        gate = self._gate(request)
        if gate is not None:
            return gate
        refusal = self._submit_refusal()
        if refusal is not None:
            return refusal
        payload = await request.json()
        problem = self._check_payload(payload)
        if problem:
            return web.json_response({"error": problem}, status=400)
        self.counters.payloads.append(payload)
        if self.behaviour.complete_after_s:
            await asyncio.sleep(self.behaviour.complete_after_s)
        if self.behaviour.fail_message:
            return web.json_response(
                {"status": "FAILED", "error": self.behaviour.fail_message}, status=422
            )
        return self._result_response({"x-cost": self.behaviour.cost})

    async def credits(self, request: web.Request) -> web.Response:
        gate = self._gate(request)
        if gate is not None:
            return gate
        return web.json_response({"credits": self.behaviour.remaining_credits, "free-credits": 1.5})

    # -- output files ------------------------------------------------------------------------

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.counters.downloads += 1
        name = request.match_info["name"]
        if self.behaviour.file_status:
            return web.Response(text="AccessDenied", status=self.behaviour.file_status)
        body = {
            "model.glb": self.glb,
            "part0.glb": self.glb,
            "splat.ply": self.ply,
            "artifacts.zip": self.zip_bytes(),
        }.get(name)
        if body is None:
            return web.Response(status=404)
        if self.behaviour.truncate_downloads > 0:
            self.behaviour.truncate_downloads -= 1
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops half way
            return response
        if self.behaviour.file_dribble_s:
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            for index in range(len(body)):
                await response.write(body[index : index + 1])
                await asyncio.sleep(self.behaviour.file_dribble_s)
            return response
        return web.Response(body=body, content_type="application/octet-stream")
