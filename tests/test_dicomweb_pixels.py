"""The pixels of the node's results and kept films over WADO-RS (``pneumolens.integration.dicomweb_pixels``,
``listen --qr --keep --dicomweb-port``): what a zero-footprint viewer such as OHIF asks for
(computed study attributes, metadata with a BulkDataURI, frames, bulk data, rendered images and
thumbnails, CORS), checked against the stored pixels and with dicomweb-client through a running node."""

from __future__ import annotations

import email.parser
import email.policy
import io
import threading

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import assert_refused, free_port, make_dicom, real_images
from pneumolens.data.images import read_image
from pneumolens.integration.dicomweb_pixels import accepted, frames
from pneumolens.integration.dicomweb_service import DicomwebService, create_app

OCTETS_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NATIVE = "1.2.840.10008.1.2.1"


def parts_of(response) -> list[tuple[str, bytes]]:
    """("media type; transfer-syntax=UID", body) of each part of a multipart/related answer."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    assert message.get_content_type() == "multipart/related" and not message.defects
    return [
        (
            f"{part.get_content_type()}; transfer-syntax={part.get_param('transfer-syntax')}",
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    """A real film as an 8-bit DICOM file, its pixels, and the same film JPEG-LS compressed."""
    folder = tmp_path_factory.mktemp("films")
    pixels = np.round(read_image(real_images("test", "NORMAL", 1)[0]) * 255).astype(np.uint8)
    plain = make_dicom(folder / "plain.dcm", pixels).read_bytes()
    return pixels, plain, make_dicom(folder / "jls.dcm", pixels, syntax="jpeg-ls").read_bytes()


@pytest.fixture
def viewer_node(trained_run, tmp_path):
    """A node with --sr --qr --keep: results and the films they came from, served over DICOMweb."""
    from pneumolens.integration.dicom_node import Node
    from pneumolens.integration.dicom_qr import QueryRetrieve, ResultStore
    from pneumolens.service.engine import Engine
    from pneumolens.service.settings import Settings

    out, keep = tmp_path / "out", tmp_path / "keep"
    out.mkdir(), keep.mkdir()
    qr = QueryRetrieve(ResultStore(out, keep), "PNEUMOLENS")
    return Node(Engine(Settings(model=str(trained_run))), None, out, sr=True, keep=keep, qr=qr)


def _store(client: TestClient, *files: bytes) -> None:
    boundary = "b0undary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n" for f in files)
    answer = client.post(
        "/dicomweb/studies",
        content=body + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert answer.status_code == 200


def _url(client: TestClient, study: str, modality: str) -> str:
    series = client.get(f"/dicomweb/studies/{study}/series?Modality={modality}").json()
    (one,) = [pydicom.Dataset.from_json(d) for d in series]
    url = f"/dicomweb/studies/{study}/series/{one.SeriesInstanceUID}"
    (instance,) = [pydicom.Dataset.from_json(d) for d in client.get(url + "/instances").json()]
    return f"{url}/instances/{instance.SOPInstanceUID}"


def test_a_study_holds_the_film_beside_its_results_with_the_counts_a_viewer_lists(viewer_node, film):
    client = TestClient(create_app(viewer_node))
    _store(client, film[1])
    study = pydicom.dcmread(io.BytesIO(film[1])).StudyInstanceUID
    (found,) = [pydicom.Dataset.from_json(d) for d in client.get("/dicomweb/studies").json()]
    assert list(found.ModalitiesInStudy) == ["DX", "OT", "SR"]  # the film (--keep), the picture, the report
    assert (found.NumberOfStudyRelatedSeries, found.NumberOfStudyRelatedInstances) == (3, 3)
    assert len(client.get("/dicomweb/studies?ModalitiesInStudy=DX").json()) == 1
    assert client.get("/dicomweb/studies?ModalitiesInStudy=CT").json() == []
    (series,) = client.get(f"/dicomweb/studies/{study}/series?Modality=DX").json()
    assert pydicom.Dataset.from_json(series).NumberOfSeriesRelatedInstances == 1


def test_frames_bulk_data_and_metadata_give_the_stored_pixels(viewer_node, film):
    pixels, plain, _ = film
    client = TestClient(create_app(viewer_node))
    _store(client, plain)
    study = pydicom.dcmread(io.BytesIO(plain)).StudyInstanceUID
    picture = _url(client, study, "OT")
    written = pydicom.dcmread(viewer_node.out / f"{picture.rsplit('/', 1)[1]}.dcm")

    (meta,) = client.get(picture + "/metadata").json()
    assert meta["7FE00010"] == {"vr": "OB", "BulkDataURI": f"http://testserver{picture}/bulkdata/7FE00010"}
    ((kind, data),) = parts_of(client.get(picture + "/frames/1", headers={"Accept": OCTETS_ANY}))
    assert data == written.PixelData and kind == f"application/octet-stream; transfer-syntax={NATIVE}"
    ((_, bulk),) = parts_of(client.get(meta["7FE00010"]["BulkDataURI"]))
    assert bulk == written.PixelData
    single = client.get(picture + "/frames/1", headers={"Accept": "application/octet-stream"})  # OHIF's singlepart
    assert single.headers["content-type"].startswith("application/octet-stream") and single.content == data

    original = _url(client, study, "DX")  # the kept film, uncompressed
    ((_, data),) = parts_of(client.get(original + "/frames/1"))
    assert np.array_equal(np.frombuffer(data, np.uint8).reshape(pixels.shape), pixels)
    report = _url(client, study, "SR")
    assert "7FE00010" not in client.get(report + "/metadata").json()[0]
    for path, accept, status in [
        (picture + "/frames/2", "", 404),  # one frame only
        (picture + "/frames/0", "", 400),
        (picture + "/frames/one", "", 400),
        (report + "/frames/1", "", 404),  # a report has no pixels
        (picture + "/frames/1", 'multipart/related; type="image/jp2"', 406),  # stored uncompressed
        (picture + "/frames/1,1", "application/octet-stream", 406),  # two frames cannot be one part
        (f"/dicomweb/studies/{study}/series/1.2/instances/3.4/frames/1", "", 404),
    ]:
        assert client.get(path, headers={"Accept": accept} if accept else {}).status_code == status, (path, accept)


def test_compressed_frames_go_as_stored_or_decoded(viewer_node, film):
    pixels, _, jls = film
    client = TestClient(create_app(viewer_node))
    _store(client, jls)
    original = _url(client, pydicom.dcmread(io.BytesIO(jls)).StudyInstanceUID, "DX")
    kept = pydicom.dcmread(viewer_node.keep / f"{original.rsplit('/', 1)[1]}.dcm")

    ((kind, data),) = parts_of(client.get(original + "/frames/1", headers={"Accept": OCTETS_ANY}))
    assert kind == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"  # as stored, for the viewer to decode
    assert data == pydicom.encaps.get_frame(kept.PixelData, 0, number_of_frames=1)
    ((kind, again),) = parts_of(
        client.get(original + "/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'})
    )
    assert again == data and kind.startswith("image/jls")  # its own media type, no syntax named: as stored
    asked_native = f'multipart/related; type="application/octet-stream"; transfer-syntax={NATIVE}'
    ((kind, data),) = parts_of(client.get(original + "/frames/1", headers={"Accept": asked_native}))
    assert kind.endswith(NATIVE) and np.array_equal(np.frombuffer(data, np.uint8).reshape(pixels.shape), pixels)


def test_rendered_images_and_thumbnails_show_the_pixels(viewer_node, film):
    pixels, plain, _ = film
    client = TestClient(create_app(viewer_node))
    _store(client, plain)
    study = pydicom.dcmread(io.BytesIO(plain)).StudyInstanceUID
    picture, original = _url(client, study, "OT"), _url(client, study, "DX")
    written = pydicom.dcmread(viewer_node.out / f"{picture.rsplit('/', 1)[1]}.dcm")

    png = client.get(picture + "/rendered", headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), written.pixel_array)  # colour, exact
    film_png = np.asarray(
        Image.open(io.BytesIO(client.get(original + "/rendered?accept=x", headers={"Accept": "image/png"}).content))
    )
    assert np.array_equal(film_png, pixels)  # an 8-bit film without a window: its own grey levels
    windowed = client.get(original + "/frames/1/rendered?window=128,1,LINEAR", headers={"Accept": "image/png"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(windowed.content))), np.where(pixels >= 128, 255, 0))
    jpeg = client.get(original + "/rendered?viewport=64,64&quality=80")  # JPEG when nothing is asked
    assert jpeg.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(jpeg.content)).size) == 64
    thumbnail = Image.open(io.BytesIO(client.get(picture + "/thumbnail").content))
    assert max(thumbnail.size) == 128 and thumbnail.mode == "RGB"
    of_study = Image.open(io.BytesIO(client.get(f"/dicomweb/studies/{study}/thumbnail").content))
    assert of_study.mode == "L" and max(of_study.size) == 128  # the study's film, not its colour picture
    of_series = Image.open(io.BytesIO(client.get(picture.rsplit("/instances", 1)[0] + "/thumbnail").content))
    assert of_series.mode == "RGB"
    report = _url(client, study, "SR")
    for path, accept, status in [
        (report + "/rendered", "", 404),
        (report.rsplit("/instances", 1)[0] + "/thumbnail", "", 404),  # a series of reports has no image
        (original + "/rendered", "image/gif", 406),
        (original + "/rendered?window=1", "", 400),
        (original + "/rendered?window=40,0", "", 400),
        (original + "/rendered?quality=0", "", 400),
        (original + "/rendered?viewport=0,10", "", 400),
        (original + "/frames/2/rendered", "", 404),
        (original + "/frames/1,1/rendered", "", 400),
    ]:
        assert client.get(path, headers={"Accept": accept} if accept else {}).status_code == status, (path, accept)


def test_a_browser_page_of_a_listed_origin_may_call_the_port(viewer_node, film):
    origin = "https://viewer.example"
    client = TestClient(create_app(viewer_node, "s3cret", cors=(origin,)))
    asked = {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    preflight = client.options("/dicomweb/studies", headers=asked)  # before the token: the browser sends none
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    got = client.get("/dicomweb/studies", headers={"Origin": origin, "Authorization": "Bearer s3cret"})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == origin
    elsewhere = client.get(
        "/dicomweb/studies", headers={"Origin": "https://evil.example", "Authorization": "Bearer s3cret"}
    )
    assert "access-control-allow-origin" not in elsewhere.headers
    assert client.get("/dicomweb/studies", headers={"Origin": origin}).status_code == 401  # CORS is no token
    plain = TestClient(create_app(viewer_node))
    assert "access-control-allow-origin" not in plain.get("/dicomweb/studies", headers={"Origin": origin}).headers


def test_accept_headers_are_read_as_viewers_write_them():
    ohif = accepted("multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert [(r.multipart, r.type, r.syntax) for r in ohif] == [(True, "application/octet-stream", "*")]
    two = accepted('multipart/related; type="image/jls", multipart/related; type="application/octet-stream"')
    assert [r.type for r in two] == ["image/jls", "application/octet-stream"]
    assert [(r.multipart, r.type) for r in accepted("")] == [(False, "*/*")]


def test_sixteen_bit_big_endian_frames_come_out_little_endian(tmp_path):
    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13) % 4096
    ds = pydicom.dcmread(make_dicom(tmp_path / "be.dcm", pixels, syntax="big-endian"))
    ((data, kind),), single = frames(ds, [1], "")
    assert not single and kind.endswith(NATIVE)
    assert np.array_equal(np.frombuffer(data, "<u2").reshape(pixels.shape), pixels)


def test_the_bulk_data_uri_names_the_pixel_data_s_vr(tmp_path):
    from pneumolens.integration.dicomweb_results import metadata_json

    pixels = (np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 3) % 4096
    for syntax, vr in [("explicit", "OW"), ("jpeg-ls", "OB")]:  # encapsulated pixel data is OB at 16 bits too
        header = pydicom.dcmread(make_dicom(tmp_path / f"{syntax}.dcm", pixels, syntax=syntax), stop_before_pixels=True)
        assert metadata_json(header, "http://node/x")["7FE00010"] == {
            "vr": vr,
            "BulkDataURI": "http://node/x/bulkdata/7FE00010",
        }


def test_pixels_that_do_not_decode_are_answered_422_not_500(tmp_path):
    from pneumolens.integration.dicomweb_results import pixel_answer

    ds = pydicom.dcmread(make_dicom(tmp_path / "cut.dcm", np.zeros((64, 48), np.uint8)))
    ds.PixelData = ds.PixelData[:100]  # truncated on the way
    for what, frame_list in [("frames", "1"), ("rendered", ""), ("thumbnail", "")]:
        answer = pixel_answer(ds, what, frame_list, "", {})
        assert answer.status_code == 422 and b"cannot be read" in answer.body, what


def test_listen_checks_the_cors_flag_before_loading_a_model(tmp_path, capsys):
    base = ["listen", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]
    assert_refused(
        capsys,
        base,
        [
            (["--dicomweb-cors", "https://viewer.example"], "--dicomweb-cors is for --dicomweb-port"),
            (["--dicomweb-port", "8042", "--dicomweb-cors", "viewer.example/app"], "expected an origin"),
            (["--dicomweb-url", "https://proxy.example/dicomweb"], "--dicomweb-url is for --dicomweb-port"),
            (["--dicomweb-port", "8042", "--dicomweb-url", "proxy.example"], "expected http(s)://"),
        ],
    )


def test_dicomweb_client_reads_metadata_frames_and_rendered_images_through_the_running_node(viewer_node, film):
    from dicomweb_client.api import DICOMwebClient

    port = free_port()
    # dicomweb-client sends Host without the port: the node is told its URL, as behind a proxy
    viewer_node.web = DicomwebService(port, url=f"http://127.0.0.1:{port}/dicomweb/")
    stop, got = threading.Event(), {}

    def use() -> None:
        client = DICOMwebClient(f"http://127.0.0.1:{port}/dicomweb")
        try:
            client.store_instances([pydicom.dcmread(io.BytesIO(film[1]))])
            (study,) = client.search_for_studies()
            uid = study["0020000D"]["Value"][0]
            series = [s for s in client.search_for_series(uid) if s["00080060"]["Value"] == ["OT"]]
            series_uid = series[0]["0020000E"]["Value"][0]
            (meta,) = client.retrieve_series_metadata(uid, series_uid)
            instance = meta["00080018"]["Value"][0]
            got["frames"] = client.retrieve_instance_frames(uid, series_uid, instance, frame_numbers=[1])
            got["png"] = client.retrieve_instance_rendered(uid, series_uid, instance, media_types=("image/png",))
            got["bulk"] = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
            got["instance"] = instance
        finally:
            stop.set()

    viewer_node.run("127.0.0.1", free_port(), stop, on_ready=lambda: threading.Thread(target=use, daemon=True).start())
    written = pydicom.dcmread(viewer_node.out / f"{got['instance']}.dcm")
    assert got["frames"] == [written.PixelData] and got["bulk"] == [written.PixelData]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(got["png"]))), written.pixel_array)
