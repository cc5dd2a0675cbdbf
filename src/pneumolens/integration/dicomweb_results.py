"""The node's results over DICOMweb (``listen --qr --dicomweb-port PORT``): what ``--qr`` serves
by C-FIND and C-GET, searched by QIDO-RS and retrieved by WADO-RS (PS3.18 10.6 and 10.4), for a
DICOMweb viewer or archive.

Search: ``GET /dicomweb/studies``, ``/dicomweb/studies/{study}/series`` and
``/dicomweb/studies/{study}/series/{series}/instances``, with attribute keys by keyword or tag
(``PatientID=123``, ``00100020=123``, ``StudyDate=20261201-20261207``, a comma-separated list of
UIDs; matched as C-FIND matches them, ``pneumolens.integration.dicom_qr``), ``includefield``, ``limit`` and
``offset``; each answer (DICOM
JSON) holds the level's default attributes, those asked for, and a ``RetrieveURL``. Retrieve:
``GET`` the study, series or instance (``multipart/related; type="application/dicom"``, the files
as the node wrote them) or its ``/metadata`` (the headers in DICOM JSON, the pixel data as a
``BulkDataURI``); an instance's ``/frames/{list}``, ``/bulkdata/7FE00010``, ``/rendered``,
``/frames/{n}/rendered`` and ``/thumbnail``, and a study's or series' ``/thumbnail`` (its film, else
its first image; ``pneumolens.integration.dicomweb_pixels``). An unknown
attribute or parameter is answered 400, a resource the node does not hold 404, a media type it
cannot give 406. The results hold patient identifiers, as they do over DIMSE: the log gives counts
only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pydicom
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from pneumolens.integration import dicomweb_pixels as pixels
from pneumolens.integration.dicom_qr import QueryRetrieve, responses

log = logging.getLogger("pneumolens.integration.dicomweb_results")
MEDIA_TYPE = "application/dicom+json"
# the attributes each level answers with unasked (PS3.18 table 10.6.3-3, those the node's files hold)
DEFAULT_KEYS = {
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}
PIXEL_DATA = "7FE00010"
PARAMETERS = {"limit", "offset", "includefield", "fuzzymatching"}


class BadQuery(ValueError):
    """A search the node cannot answer as asked (an unknown attribute, a bad limit): HTTP 400."""


def keyword_of(name: str) -> str:
    """The attribute keyword of a query key given as a keyword or an eight-digit tag."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise BadQuery(f"{name}: not a DICOM attribute")
    return keyword


def search(qr: QueryRetrieve, level: str, params: list[tuple[str, str]], fixed: dict[str, str], base: str) -> list:
    """QIDO-RS at ``level`` (STUDY, SERIES or IMAGE) over the node's results: a list of DICOM JSON
    objects. ``fixed``: the UIDs of the path; ``base``: the service's URL, for each RetrieveURL."""
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword in DEFAULT_KEYS[level]:
        setattr(query, keyword, None)  # empty: return it (None fits every VR, "" only the text ones)
    limit, offset = None, 0
    for name, value in params:
        if name == "includefield":
            for field in value.split(","):
                if field and field != "all":
                    setattr(query, keyword_of(field), query.get(keyword_of(field)))
        elif name in ("limit", "offset"):
            if not value.isdigit():
                raise BadQuery(f"{name}={value}: expected a whole number")
            limit, offset = (int(value), offset) if name == "limit" else (limit, int(value))
        elif name not in PARAMETERS:  # fuzzymatching: the node matches exactly
            keyword = keyword_of(name)
            if dictionary_VR(keyword) == "SQ":
                raise BadQuery(f"{name}: sequence matching is not supported")
            setattr(query, keyword, value.replace(",", "\\") if keyword.endswith("UID") else value)  # UID lists
    for keyword, uid in fixed.items():
        setattr(query, keyword, uid)
    found = list(responses(query, qr.store, qr.ae_title))[offset:]
    found = found[:limit] if limit is not None else found
    answers = []
    for answer in found:
        del answer.QueryRetrieveLevel
        answer.RetrieveURL = base + _path(answer, level)
        answers.append(answer.to_json_dict())
    return answers


def _path(ds: Dataset, level: str) -> str:
    path = f"/studies/{ds.StudyInstanceUID}"
    if level in ("SERIES", "IMAGE"):
        path += f"/series/{ds.SeriesInstanceUID}"
    if level == "IMAGE":
        path += f"/instances/{ds.SOPInstanceUID}"
    return path


def _files(qr: QueryRetrieve, uids: dict[str, str]) -> list:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    for keyword, uid in uids.items():
        setattr(query, keyword, uid)
    return qr.store.find(query)


def multipart(parts: list[bytes], media: str | list[str] = "application/dicom") -> tuple[bytes, str]:
    """``parts`` as a ``multipart/related`` body (each part of type ``media``, or its own of a list),
    and the body's media type."""
    boundary = uuid.uuid4().hex
    types = [media] * len(parts) if isinstance(media, str) else media
    body = b"".join(
        f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n"
        for part, kind in zip(parts, types, strict=True)
    )
    root = types[0].split(";")[0] if types else "application/dicom"
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="{root}"; boundary={boundary}'


def metadata_json(header: Dataset, url: str) -> dict:
    """``header`` (no pixels) in DICOM JSON, its pixel data, if any, named by a ``BulkDataURI``."""
    found = header.to_json_dict()
    if "NumberOfFrames" in header or "Rows" in header:  # an image: the pixels were left behind
        syntax = pydicom.uid.UID(str(getattr(header, "file_meta", {}).get("TransferSyntaxUID", "")))
        wide = int(header.get("BitsAllocated", 8) or 8) > 8 and not (syntax and syntax.is_compressed)
        vr = "OW" if wide else "OB"  # encapsulated pixel data is OB whatever its bits
        found[PIXEL_DATA] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{PIXEL_DATA}"}
    return found


def pixel_answer(ds: Dataset, what: str, frame_list: str, accept: str, params: dict[str, str]) -> Response:
    """``what`` (frames, bulkdata, rendered, thumbnail) of ``ds`` as an HTTP answer; 400, 404 or 406
    for a request that cannot be met as asked."""
    try:
        if what in ("rendered", "thumbnail"):
            number = pixels.frame_numbers(frame_list or "1", pixels.frame_count(ds))
            if len(number) != 1:
                raise pixels.BadRequest("one frame is rendered at a time")
            if what == "thumbnail" and "viewport" not in params:
                params = params | {"viewport": "128,128"}
            image, media = pixels.render(ds, number[0], accept, params)
            return Response(content=image, media_type=media)
        if what == "frames":
            numbers = pixels.frame_numbers(frame_list, pixels.frame_count(ds))
            parts, single = pixels.frames(ds, numbers, accept)
        else:
            parts, single = pixels.bulk_pixel_data(ds, accept)
    except pixels.BadRequest as e:
        return JSONResponse(status_code=400, content={"detail": str(e)})
    except pixels.NoSuchFrame as e:
        return JSONResponse(status_code=404, content={"detail": str(e)})
    except pixels.NotAcceptable as e:
        return JSONResponse(status_code=406, content={"detail": str(e)})
    except Exception as e:  # noqa: BLE001 - pixels that do not decode (a kept film's fault): a clear answer, not a 500
        log.warning("dicomweb: the pixels of a stored object could not be read (%s)", type(e).__name__)
        return JSONResponse(
            status_code=422, content={"detail": f"the stored pixels cannot be read ({type(e).__name__})"}
        )
    if single:
        return Response(content=parts[0][0], media_type=parts[0][1])
    body, media_type = multipart([data for data, _ in parts], [kind for _, kind in parts])
    return Response(content=body, media_type=media_type)


def add_routes(
    app: FastAPI, qr: QueryRetrieve, denied: Callable[[Request], JSONResponse | None], url: str | None = None
) -> None:
    """QIDO-RS and WADO-RS of ``qr``'s results on ``app``; ``denied`` answers a request the token does
    not let in (None: let in); ``url``: the service's URL as clients reach it, for the URLs in the
    answers (default: the scheme and Host of each request, then ``/dicomweb``)."""

    def base_of(request: Request) -> str:
        return url.rstrip("/") if url else str(request.base_url).rstrip("/") + "/dicomweb"

    async def find(request: Request, level: str, fixed: dict[str, str]) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            params = list(request.query_params.multi_items())
            answers = await run_in_threadpool(search, qr, level, params, fixed, base_of(request))
        except BadQuery as e:
            return JSONResponse(status_code=400, content={"detail": str(e)})
        log.info("dicomweb: search at %s level: %d match(es)", level, len(answers))
        return JSONResponse(content=answers, media_type=MEDIA_TYPE)

    async def retrieve(request: Request, uids: dict[str, str], metadata: bool) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        files = await run_in_threadpool(_files, qr, uids)
        if not files:
            return JSONResponse(status_code=404, content={"detail": "the node holds no such result"})
        if metadata:
            base = base_of(request)
            headers = [metadata_json(header, base + _path(header, "IMAGE")) for _, header in files]
            log.info("dicomweb: metadata of %d result object(s) sent", len(headers))
            return JSONResponse(content=headers, media_type=MEDIA_TYPE)
        parts = []
        for path, _ in files:
            try:
                parts.append(path.read_bytes())
            except OSError:  # deleted by retention meanwhile
                continue
        if not parts:
            return JSONResponse(status_code=404, content={"detail": "the node holds no such result"})
        body, media_type = multipart(parts)
        log.info("dicomweb: %d result object(s) sent", len(parts))
        return Response(content=body, media_type=media_type)

    async def studies(request: Request) -> Response:
        return await find(request, "STUDY", {})

    async def series(request: Request, study: str) -> Response:
        return await find(request, "SERIES", {"StudyInstanceUID": study})

    async def instances(request: Request, study: str, series: str) -> Response:
        return await find(request, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    uid_of = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}

    def retriever(metadata: bool) -> Callable[..., Any]:
        async def route(request: Request) -> Response:
            uids = {uid_of[name]: uid for name, uid in request.path_params.items()}
            return await retrieve(request, uids, metadata)

        return route

    def pixel_route(what: str) -> Callable[..., Any]:
        async def route(request: Request) -> Response:
            if (refusal := denied(request)) is not None:
                return refusal
            path_params = dict(request.path_params)
            frame_list = path_params.pop("frames", "")
            uids = {uid_of[name]: uid for name, uid in path_params.items()}
            files = await run_in_threadpool(_files, qr, uids)
            if what == "thumbnail":  # a study's or series' own: its first image, a film before a picture
                images = [(path, header) for path, header in files if "Rows" in header]
                files = sorted(images, key=lambda file: str(file[1].get("Modality", "")) not in ("CR", "DX"))
            ds = await run_in_threadpool(qr.store.read, files[0][0]) if files else None
            if ds is None:
                return JSONResponse(status_code=404, content={"detail": "the node holds no such result"})
            accept, params = request.headers.get("accept", ""), dict(request.query_params)
            answer = await run_in_threadpool(pixel_answer, ds, what, frame_list, accept, params)
            log.info("dicomweb: %s of a result object: HTTP %d", what, answer.status_code)
            return answer

        return route

    s, se, i = "/dicomweb/studies/{study}", "/series/{series}", "/instances/{instance}"
    app.add_api_route("/dicomweb/studies", studies, methods=["GET"])
    app.add_api_route(s + "/series", series, methods=["GET"])
    app.add_api_route(s + se + "/instances", instances, methods=["GET"])
    for path in (s, s + se, s + se + i):
        app.add_api_route(path, retriever(metadata=False), methods=["GET"])
        app.add_api_route(path + "/metadata", retriever(metadata=True), methods=["GET"])
    f = "/frames/{frames}"
    for path, what in [
        (f, "frames"),
        (f"/bulkdata/{PIXEL_DATA}", "bulkdata"),
        (f"/bulkdata/{PIXEL_DATA.lower()}", "bulkdata"),
        ("/rendered", "rendered"),
        (f + "/rendered", "rendered"),
        ("/thumbnail", "thumbnail"),
    ]:
        app.add_api_route(s + se + i + path, pixel_route(what), methods=["GET"])
    for path in (s, s + se):
        app.add_api_route(path + "/thumbnail", pixel_route("thumbnail"), methods=["GET"])
