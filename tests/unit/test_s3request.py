"""Which S3 operation a request is, and what the proxy does with it: fail closed on object data."""

import pytest
from mitmproxy.http import Headers

from cloudtaser_s3.s3request import Action, classify, split_path


def op(method, path, query="", **headers):
    h = Headers(**{k.replace("_", "-"): v for k, v in headers.items()})
    return classify(method, path, query, h)


@pytest.mark.parametrize(
    ("method", "path", "query", "operation", "action"),
    [
        ("GET", "/", "", "ListBuckets", Action.PASS),
        ("PUT", "/b", "", "CreateBucket", Action.PASS),
        ("DELETE", "/b", "", "DeleteBucket", Action.PASS),
        ("HEAD", "/b", "", "HeadBucket", Action.PASS),
        ("GET", "/b", "location", "GetBucketLocation", Action.PASS),
        ("GET", "/b", "", "ListObjects", Action.PASS),
        ("GET", "/b", "prefix=a&delimiter=%2F", "ListObjects", Action.PASS),
        ("GET", "/b", "list-type=2&prefix=a", "ListObjectsV2", Action.PASS),
        ("GET", "/b", "uploads", "ListMultipartUploads", Action.PASS),
        ("GET", "/b", "versions", "ListObjectVersions", Action.PASS),
        ("POST", "/b", "delete", "DeleteObjects", Action.PASS),
        ("PUT", "/b/k", "", "PutObject", Action.ENCRYPT),
        ("GET", "/b/k", "", "GetObject", Action.DECRYPT),
        ("HEAD", "/b/k", "", "HeadObject", Action.HEAD),
        ("DELETE", "/b/k", "", "DeleteObject", Action.PASS),
        ("PUT", "/b/k", "tagging", "PutObjectObjectTagging", Action.PASS),
        ("GET", "/b/k", "acl", "GetObjectObjectAcl", Action.PASS),
        ("GET", "/b/k", "uploadId=u", "ListParts", Action.UPLOAD_ID),
        ("DELETE", "/b/k", "uploadId=u", "AbortMultipartUpload", Action.UPLOAD_ID),
        ("POST", "/b/k", "uploads", "CreateMultipartUpload", Action.CREATE_UPLOAD),
        ("PUT", "/b/k", "partNumber=1&uploadId=u", "UploadPart", Action.ENCRYPT),
        ("POST", "/b/k", "uploadId=u", "CompleteMultipartUpload", Action.COMPLETE_UPLOAD),
    ],
)
def test_operations(method, path, query, operation, action):
    r = op(method, path, query)
    assert (r.operation, r.action) == (operation, action)


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "operation"),
    [
        ("POST", "/b", "", {}, "PostObject"),
        ("POST", "/b/k", "select&select-type=2", {}, "SelectObjectContent"),
        ("PUT", "/b/k", "something-new", {}, "PutObject:something-new"),
        ("PATCH", "/b/k", "", {}, "PATCH object"),
    ],
)
def test_object_data_the_proxy_does_not_handle_yet_is_refused(
    method, path, query, headers, operation
):
    r = op(method, path, query, **headers)
    assert (r.operation, r.action) == (operation, Action.REFUSE)


@pytest.mark.parametrize(
    ("path", "bucket", "key"),
    [
        ("/b/k", "b", "k"),
        ("/b/a%20b+c", "b", "a b+c"),
        ("/b/dir//x", "b", "dir//x"),
        ("/b/%E2%82%AC%25", "b", "€%"),
        ("/b/", "b", None),
        ("/b", "b", None),
        ("/", None, None),
    ],
)
def test_keys_are_decoded_once_and_plus_is_literal(path, bucket, key):
    assert split_path(path) == (bucket, key)


def test_resource_names_the_object():
    assert op("GET", "/b/a%20b").resource == "/b/a b"


@pytest.mark.parametrize(
    ("query", "operation"),
    [("", "CopyObject"), ("partNumber=1&uploadId=u", "UploadPartCopy")],
)
def test_copies_are_done_by_the_proxy(query, operation):
    r = op("PUT", "/b/k", query, **{"x-amz-copy-source": "/b/o"})
    assert (r.operation, r.action) == (operation, Action.COPY)


def test_presigned_url_parameters_do_not_change_the_operation():
    q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a&X-Amz-Signature=b"
    assert op("PUT", "/b/k", q).operation == "PutObject"
    assert op("PUT", "/b/k", q + "&partNumber=1&uploadId=u").operation == "UploadPart"


def test_the_sdks_x_id_label_is_not_a_sub_resource():
    assert op("PUT", "/b/k", "x-id=PutObject").operation == "PutObject"
    assert op("GET", "/b/k", "x-id=GetObject").operation == "GetObject"
    part = op("PUT", "/b/k", "x-id=UploadPart&partNumber=2&uploadId=u")
    assert part.operation == "UploadPart"


# Requests a store might run as an object write must never pass through with their body.


def test_put_attributes_is_refused_s3_has_no_such_operation():
    """Stores that do not know PUT ?attributes run it as PutObject: it would store plaintext."""
    assert op("PUT", "/bucket/key", "attributes").action is Action.REFUSE
    assert op("GET", "/bucket/key", "attributes").action is Action.PASS


@pytest.mark.parametrize("path", ["/bucket%2Fkey", "/bucket%2fdir%2Fkey", "/b%20c/key", "/.x/k"])
def test_a_bucket_name_s3_would_not_accept_is_refused(path):
    """SeaweedFS decodes %2F before routing: /bucket%2Fkey would be object 'key' in 'bucket'."""
    request = op("PUT", path, "")
    assert (request.operation, request.action) == ("InvalidBucketName", Action.REFUSE)


@pytest.mark.parametrize("sub", ["tagging", "versioning", "policy", "lifecycle", "cors", "acl"])
def test_bucket_configuration_passes(sub):
    assert op("PUT", "/bucket", sub).action is Action.PASS


@pytest.mark.parametrize("query", ["unknown", "tagging&extra", "uploads"])
def test_a_bucket_put_with_anything_else_is_refused(query):
    assert op("PUT", "/bucket", query).action is Action.REFUSE
