"""`mixmicrobleednet review OUTPUT`: a local web app over an output folder (seed layout or BIDS
derivatives) where one rater reviews the cases: the cohort page lists them, the case page shows the
T2* scan with the mask in NiiVue (bundled under static/, no network at run time) beside the
detections to accept, reject or mark unsure, microbleeds to add by a click, a note and "case done".

Every decision goes straight to the rater's review file (decisions.py); the page holds no state of
its own. The app serves its static files, the cases' outputs their records name (only inside the
output folder) and each case's T2* scan from the run's input folder; nothing else.
"""

from __future__ import annotations

import logging
import math
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__, records
from .. import decisions
from ..decisions import ReviewError, StaleReview
from .views import VIEW_MM, CaseImages

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
#: Output kinds the case page may load (the T2* comes from the input folder).
SERVED_OUTPUTS = ("mask", "qc", "probability", "brain_mask")
_LOOPBACK = ["127.0.0.1", "localhost", "::1"]
_DETECTION_COLUMNS = ("lesion_id", "max_probability", "calibrated_probability", "volume_mm3", "region", "region_category",
                      "centroid_x_ras_mm", "centroid_y_ras_mm", "centroid_z_ras_mm")


def _plain(value):
    """A table cell as JSON: NaN (an empty cell) as null, numpy scalars as Python's."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


class Workspace:
    """The output folder under review, its run's input folder (for the T2* scans) and the rater.
    Records are read anew on each request: a run may still be adding cases."""

    def __init__(self, output_dir: Path, rater: str, input_dir: Path | None = None):
        self.output_dir = Path(output_dir)
        self.rater = decisions.check_rater(rater)
        self.input_dir = input_dir
        self.images = CaseImages()

    def records(self) -> dict[str, dict]:
        return {record["case_id"]: record for record in records.read_records(self.output_dir)}

    def record(self, case_id: str, found: dict[str, dict] | None = None) -> dict:
        """A case's record, from `found` (records() read once for a request) or read now."""
        record = (self.records() if found is None else found).get(case_id)
        if record is None:
            raise HTTPException(404, f"no case {case_id!r} in {self.output_dir}")
        return record

    def case_row(self, record: dict) -> dict:
        """A case as the cohort page lists it."""
        reviews = decisions.read_reviews(self.output_dir, record) if record.get("status") == "ok" \
            else decisions.CaseReviews(None)
        located = record.get("regions") or {}
        raters = sorted({*reviews.current, *reviews.stale})
        return {"case_id": record["case_id"], "subject": record.get("subject"), "session": record.get("session"),
                "status": record.get("status"), "model": record.get("model", {}).get("name"),
                "microbleed_count": record.get("microbleed_count"), "categories": located.get("categories"),
                "strictly_lobar": located.get("strictly_lobar"), "my_review": reviews.status(self.rater),
                "reviews": {rater: reviews.status(rater) for rater in raters}, "problems": reviews.problems}

    def cohort(self) -> dict:
        """The cohort page's cases; the first one in the rater's order is read for the viewer meanwhile."""
        found = self.records()
        rows = [self.case_row(record) for record in found.values()]
        first = next((found[case_id] for case_id in self.review_order(rows) if found[case_id].get("status") == "ok"), None)
        if first:
            try:
                self.images.read_ahead(self.image_paths(first))
            except ReviewError:
                pass  # its page says why
        return {"output_dir": str(self.output_dir), "rater": self.rater, "version": __version__,
                "raters": sorted({rater for row in rows for rater in row["reviews"]} | {self.rater}), "cases": rows,
                "problems": decisions.unknown_review_folders(self.output_dir, set(found))}

    def review_order(self, rows: list[dict]) -> list[str]:
        """The cohort page's default order: the rater's unfinished cases first, most microbleeds first."""
        return [row["case_id"] for row in sorted(rows, key=lambda r: (r["my_review"] == "done",
                                                                        -(r["microbleed_count"] or 0), r["case_id"]))]

    def image_paths(self, record: dict) -> dict[str, Path]:
        """The images the viewer shows: the mask, and the T2* scan when the input folder has it."""
        paths = {"mask": decisions.output_path(self.output_dir, record, "mask")}
        t2s = decisions.input_path(record, self.input_dir)
        return paths | ({"t2s": t2s} if t2s else {})

    def case(self, case_id: str) -> dict:
        """Everything the case page shows."""
        record = self.record(case_id)
        order = self.review_order([self.case_row(r) for r in self.records().values()])
        after = order[order.index(case_id) + 1:] + order[:order.index(case_id)]
        page = {**self.case_row(record), "rater": self.rater, "error_messages": record.get("error_messages", []),
                "detections": [], "set_aside": [], "review": None, "stale_review": None, "t2s": None, "mask": None, "qc": None,
                "next_case": after[0] if after else None, "messages": []}
        if record.get("status") != "ok":
            page["messages"].append(f"the run failed on this case: {'; '.join(record.get('error_messages', []))}")
            return page
        try:
            table = decisions.detections(self.output_dir, record)
            decisions.output_path(self.output_dir, record, "mask")
        except ReviewError as exc:
            page["messages"].append(str(exc))
            return page
        page["detections"] = [{column: _plain(row.get(column)) for column in _DETECTION_COLUMNS}
                              for row in table.to_dict("records")]
        # what the edge rule and the mimic check set aside, with why, for a second look
        page["set_aside"] = [{**mark, "edge_margin_mm": record["edge_rule"]["edge_margin_mm"]}
                             if mark["set_aside"] == "edge rule" else {**mark, "cut": record["mimic_check"]["cut"]}
                             for mark in decisions.set_aside_marks(record)]
        reviews = decisions.read_reviews(self.output_dir, record, set(table["lesion_id"].astype(int)))
        page["review"] = reviews.current.get(self.rater)
        page["stale_review"] = reviews.stale.get(self.rater)
        page["mask"] = f"/api/cases/{case_id}/outputs/mask"
        page["view"] = {"url": f"/api/cases/{case_id}/view", "size_mm": VIEW_MM}
        self.images.read_ahead(self.image_paths(record))
        if "qc" in record.get("outputs", {}):
            page["qc"] = f"/api/cases/{case_id}/outputs/qc"
        t2s = decisions.input_path(record, self.input_dir)
        if t2s is not None:
            page["t2s"] = {"url": f"/api/cases/{case_id}/t2s", "name": t2s.name}
        else:
            page["messages"].append("its T2* scan is not in the input folder (give it with --input): the mask is "
                                    "shown alone")
        return page


def _point(body: dict) -> tuple[float, float, float]:
    return body["x_ras_mm"], body["y_ras_mm"], body["z_ras_mm"]


#: The changes a rater makes: each takes the workspace, the case and the request's JSON object and
#: returns the rater's review as written (None: no review now).
_CHANGES = {
    "decision": lambda w, case_id, body: decisions.record_decision(w.output_dir, w.record(case_id), w.rater,
                                                                   int(body["lesion_id"]), body["decision"]),
    "added": lambda w, case_id, body: decisions.add_microbleed(w.output_dir, w.record(case_id), w.rater, _point(body),
                                                               body.get("set_aside")),
    "remove_added": lambda w, case_id, body: decisions.remove_added(w.output_dir, w.record(case_id), w.rater,
                                                                    int(body["added_id"])),
    "note": lambda w, case_id, body: decisions.set_note(w.output_dir, w.record(case_id), w.rater, body["note"]),
    "done": lambda w, case_id, body: decisions.set_done(w.output_dir, w.record(case_id), w.rater, bool(body["done"])),
    "start_again": lambda w, case_id, body: decisions.start_again(w.output_dir, w.record(case_id), w.rater),
}


def create_app(workspace: Workspace, host: str = "127.0.0.1") -> Starlette:
    """The app; bound to a loopback address it answers only requests for a loopback name (a page of
    another site cannot reach it by a name of its own that resolves to 127.0.0.1)."""
    # Plain functions run in Starlette's thread pool (they read files); the changes wait on a file
    # lock, so they too run there.
    def cohort(request: Request) -> Response:
        return JSONResponse(workspace.cohort())

    def case(request: Request) -> Response:
        return JSONResponse(workspace.case(request.path_params["case_id"]))

    def output(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in SERVED_OUTPUTS:
            raise HTTPException(404, f"{kind}: not an output the app serves")
        try:
            path = decisions.output_path(workspace.output_dir, workspace.record(request.path_params["case_id"]), kind)
        except ReviewError as exc:
            raise HTTPException(404, str(exc)) from None
        if not path.is_file():
            raise HTTPException(404, f"{path.name}: no such file")
        return FileResponse(path)

    def t2s(request: Request) -> Response:
        path = decisions.input_path(workspace.record(request.path_params["case_id"]), workspace.input_dir)
        if path is None:
            raise HTTPException(404, "no T2* scan in the input folder")
        return FileResponse(path)

    def view(request: Request) -> Response:
        """GET /api/cases/{case}/view/{t2s|mask}?x=&y=&z=[&ahead=CASE]: the cube the viewer shows around a
        point (RAS mm); `ahead`: the case to read next."""
        case_id, kind = request.path_params["case_id"], request.path_params["kind"]
        found = workspace.records()
        record = workspace.record(case_id, found)
        try:
            paths = workspace.image_paths(record)
            centre = tuple(float(request.query_params[axis]) for axis in "xyz")
        except ReviewError as exc:
            raise HTTPException(404, str(exc)) from None
        except (KeyError, ValueError):
            raise HTTPException(400, "give the centre as x, y and z (RAS mm)") from None
        if kind not in paths:
            raise HTTPException(404, f"{kind}: no such image of {case_id}")
        cube = workspace.images.cube(paths, kind, centre)
        ahead = found.get(request.query_params.get("ahead", ""))
        if ahead and ahead.get("status") == "ok":  # the next case, read while the rater works on this one
            try:
                workspace.images.read_ahead(workspace.image_paths(ahead))
            except ReviewError:
                pass  # its page says why
        return Response(cube, media_type="application/octet-stream")

    async def change(request: Request) -> Response:
        """POST /api/cases/{case}/{what}: decision {lesion_id, decision}, added {x_ras_mm, y_ras_mm,
        z_ras_mm[, set_aside: the step that set a mark aside there]}, remove_added {added_id}, note {note}, done {done}, start_again {}."""
        what = request.path_params["what"]
        # JSON only: another site's page cannot send that without the browser asking us first (CORS)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, status_code=415)
        if what not in _CHANGES:
            raise HTTPException(404, f"{what}: no such change")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            review = await run_in_threadpool(_CHANGES[what], workspace, request.path_params["case_id"], body)
        except StaleReview as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except (ValueError, KeyError, TypeError) as exc:  # ReviewError is a ValueError
            return JSONResponse({"error": f"{what}: {exc}"}, status_code=400)
        return JSONResponse({"review": review})

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "case.html")

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "cohort.html")

    return Starlette(routes=[
        Route("/", index), Route("/cases/{case_id}", page),
        Route("/api/cohort", cohort), Route("/api/cases/{case_id}", case),
        Route("/api/cases/{case_id}/outputs/{kind}", output), Route("/api/cases/{case_id}/t2s", t2s),
        Route("/api/cases/{case_id}/view/{kind}", view),
        Route("/api/cases/{case_id}/{what}", change, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=_LOOPBACK if host in _LOOPBACK else ["*"])])


def serve(workspace: Workspace, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted; prints the address first (port 0: a free port)."""
    import uvicorn

    listening = socket.create_server((host, port))
    address = f"http://{host}:{listening.getsockname()[1]}/"
    print(f"Reviewing {workspace.output_dir} as {workspace.rater}: {address}  (Ctrl+C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(workspace, host), log_level="warning"))
    server.run(sockets=[listening])


def _login_name() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's user without a passwd entry or $USER
        return None


def main(output_dir: Path, input_dir: Path | None = None, rater: str | None = None, host: str = "127.0.0.1",
         port: int = 8765, export: bool = False) -> int:
    """`mixmicrobleednet review`: serve the app (or with `export`, write the case pages and exit);
    2 when it cannot start."""
    from .. import layout
    from ..longitudinal import raw_dataset

    if not (Path(output_dir) / layout.RECORDS_DIR).is_dir():
        log.error("%s: no %s/ folder: not an output folder of a run", output_dir, layout.RECORDS_DIR)
        return 2
    input_dir = input_dir or raw_dataset(output_dir)
    if input_dir is None:
        log.warning("%s: no input folder given (--input): the viewer shows the masks without the T2* scans", output_dir)
    if export:
        from .export import export_cases

        written = export_cases(Path(output_dir), input_dir)
        log.info("%d case page(s) written under %s", len(written), Path(output_dir) / layout.REVIEWS_DIR)
        return 0
    try:
        workspace = Workspace(output_dir, rater or _login_name() or "", input_dir)
    except ReviewError as exc:
        log.error("--rater: %s", exc)
        return 2
    try:
        serve(workspace, host, port)
    except OSError as exc:  # the port is taken, the address not ours
        log.error("cannot listen on %s:%s: %s", host, port, exc)
        return 2
    return 0
