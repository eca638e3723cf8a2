"""Every request and reply example of protocol.md (Appendix A, sections 2-4) through the
sans-IO core: requests decode to the typed shapes, replies encode to the documented JSON."""
import json

import pytest

from gcs.protocol import hresult as hr
from gcs.protocol.framing import encode_frame
from gcs.protocol.ids import REQUEST_IDS, RequestId, response_id
from gcs.protocol.messages import parse_request
from gcs.protocol.replies import (container_notification, encode_json, encode_reply, error_response,
                                  negotiate_response, response)
from gcs.protocol.session import BridgeSession

AID = "5b3a7f52-0c1e-4d6e-9a40-3f1f4b5c6d7e"
ZERO = "00000000-0000-0000-0000-000000000000"


def negotiated() -> BridgeSession:
    s = BridgeSession()
    s.receive_data(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 0,
                                b'{"ContainerId":"","ActivityId":"%s","MinimumVersion":4,"MaximumVersion":4}\n' % ZERO.encode()))
    reply = s.data_to_send()
    assert json.loads(reply[16:])["Result"] == 0
    return s


def through_session(ident: int, payload: str):
    s = negotiated()
    [req] = s.receive_data(encode_frame(ident, 7, (payload + "\n").encode()))
    assert req.seq == 7 and req.ident == ident
    return req.request


def test_negotiate_example_and_reply():
    s = BridgeSession()
    assert s.receive_data(encode_frame(0x10100B01, 0, (
        '{"ContainerId":"","ActivityId":"00000000-0000-0000-0000-000000000000","MinimumVersion":4,"MaximumVersion":4}\n').encode())) == []
    out = s.data_to_send()
    assert out[:16] == encode_frame(0x20100B01, 0, b"")[:4] + out[4:8] + (0).to_bytes(8, "little")
    assert out[16:].decode() == (
        '{"Result":0,"ActivityId":"00000000-0000-0000-0000-000000000000","Version":4,"Capabilities":'
        '{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"RuntimeOsType":"Linux","GuestDefinedCapabilities":'
        '{"NamespaceAddRequestSupported":true,"SignalProcessSupported":true,"DumpStacksSupported":true,'
        '"DeleteContainerStateSupported":true}}}')
    assert s.negotiated


def test_create_example():
    config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": "/run/gcs/c/c1",
              "OciSpecification": {"ociVersion": "1.0.2", "windows": {"layerFolders": None}},
              "ScratchDirPath": "/run/gcs/c/c1/scratch/c1"}
    req = through_session(RequestId.CREATE, json.dumps(
        {"ContainerId": "c1", "ActivityId": ZERO, "ContainerConfig": json.dumps(config)}))
    assert req.container_id == "c1" and req.activity_id == ZERO
    assert req.container_config.str("OciBundlePath") == "/run/gcs/c/c1"
    assert req.container_config.obj("SchemaVersion").uint("Minor") == 1


@pytest.mark.parametrize("ident", [RequestId.START, RequestId.SHUTDOWN_GRACEFUL, RequestId.SHUTDOWN_FORCED,
                                   RequestId.DUMP_STACKS, RequestId.DELETE_CONTAINER_STATE])
def test_base_request_examples(ident):
    req = through_session(ident, '{"ContainerId":"c1","ActivityId":"00000000-0000-0000-0000-000000000000"}')
    assert (req.container_id, req.activity_id) == ("c1", ZERO)


def test_execute_container_init_example():
    req = through_session(RequestId.EXECUTE_PROCESS, '{"ContainerId":"c1","ActivityId":"%s","Settings":{"ProcessParameters":"{\\"CreateStdInPipe\\":true,\\"CreateStdOutPipe\\":true,\\"CreateStdErrPipe\\":true}","VsockStdioRelaySettings":{"StdIn":1073741825,"StdOut":1073741826,"StdErr":1073741827}}}' % AID)
    p = req.params
    assert (p.create_stdin, p.create_stdout, p.create_stderr) == (True, True, True)
    assert (req.ports.stdin, req.ports.stdout, req.ports.stderr) == (1073741825, 1073741826, 1073741827)
    assert p.oci_process is None and p.command_args == []


def test_execute_container_exec_example():
    req = through_session(RequestId.EXECUTE_PROCESS, '{"ContainerId":"c1","ActivityId":"%s","Settings":{"ProcessParameters":"{\\"CreateStdOutPipe\\":true,\\"OciProcess\\":{\\"terminal\\":false,\\"user\\":{\\"uid\\":0,\\"gid\\":0},\\"args\\":[\\"ls\\"],\\"env\\":[\\"PATH=/bin\\"],\\"cwd\\":\\"/\\"}}","VsockStdioRelaySettings":{"StdOut":1073741828}}}' % AID)
    assert req.params.oci_process.str_list("args") == ["ls"]
    assert req.ports.stdout == 1073741828 and req.ports.stdin == 0


def test_execute_uvm_process_example():
    req = through_session(RequestId.EXECUTE_PROCESS, '{"ContainerId":"00000000-0000-0000-0000-000000000000","ActivityId":"%s","Settings":{"ProcessParameters":"{\\"CommandArgs\\":[\\"mkfs.ext4\\",\\"-q\\",\\"/run/mounts/scsi/m1\\"],\\"WorkingDirectory\\":\\"/\\",\\"Environment\\":{\\"PATH\\":\\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\\"},\\"CreateStdErrPipe\\":true}","VsockStdioRelaySettings":{"StdErr":1073741829}}}' % AID)
    p = req.params
    assert p.command_args == ["mkfs.ext4", "-q", "/run/mounts/scsi/m1"] and p.working_directory == "/"
    assert p.environment == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert p.create_stderr and not p.create_stdout and req.ports.stderr == 1073741829


def test_host_escaping_inside_json_strings():
    params = '{"CommandArgs":["sh","-c","a \\u003c b \\u0026\\u0026 c \\u003e d"]}'
    req = through_session(RequestId.EXECUTE_PROCESS, json.dumps(
        {"ContainerId": ZERO, "ActivityId": ZERO, "Settings": {"ProcessParameters": params}}))
    assert req.params.command_args == ["sh", "-c", "a < b && c > d"]


def test_wait_signal_resize_properties_examples():
    w = through_session(RequestId.WAIT_FOR_PROCESS, '{"ContainerId":"c1","ActivityId":"%s","ProcessId":512,"TimeoutInMs":4294967295}' % AID)
    assert (w.process_id, w.timeout_ms) == (512, 0xFFFFFFFF)
    s = through_session(RequestId.SIGNAL_PROCESS, '{"ContainerId":"c1","ActivityId":"%s","ProcessId":512,"Options":{"Signal":15}}' % AID)
    assert (s.process_id, s.signal) == (512, 15)
    k = through_session(RequestId.SIGNAL_PROCESS, '{"ContainerId":"c1","ActivityId":"%s","ProcessId":512}' % AID)
    assert k.signal == 0  # kill: no Options
    r = through_session(RequestId.RESIZE_CONSOLE, '{"ContainerId":"c1","ActivityId":"%s","ProcessId":512,"Height":40,"Width":120}' % AID)
    assert (r.height, r.width) == (40, 120)
    g = through_session(RequestId.GET_PROPERTIES, '{"ContainerId":"c1","ActivityId":"%s","Query":"{\\"PropertyTypes\\":[\\"Statistics\\"]}"}' % AID)
    assert g.property_types == ["Statistics"]


MODIFY_EXAMPLES = [
    ('{"RequestType":"Add","ResourceType":"VPMemDevice","Settings":{"DeviceNumber":1,"MountPath":"/run/layers/p1"}}', "VPMemDevice"),
    ('{"RequestType":"Add","ResourceType":"VPMemDevice","Settings":{"DeviceNumber":1,"MountPath":"/run/layers/p1-4096-10485760","MappingInfo":{"DeviceOffsetInBytes":4096,"DeviceSizeInBytes":10485760}}}', "VPMemDevice"),
    ('{"RequestType":"Add","ResourceType":"MappedVirtualDisk","Settings":{"MountPath":"/run/gcs/c/c1","Lun":1,"EnsureFilesystem":true,"Filesystem":"ext4"}}', "MappedVirtualDisk"),
    ('{"RequestType":"Add","ResourceType":"MappedVirtualDisk","Settings":{"MountPath":"/run/mounts/scsi/m2","Lun":2,"ReadOnly":true,"Options":["ro"]}}', "MappedVirtualDisk"),
    ('{"RequestType":"Remove","ResourceType":"SCSIDevice","Settings":{"Lun":2}}', "SCSIDevice"),
    ('{"RequestType":"Add","ResourceType":"CombinedLayers","Settings":{"ContainerID":"c1","ContainerRootPath":"/run/gcs/c/c1/rootfs","Layers":[{"Path":"/run/layers/p2"},{"Path":"/run/layers/p1"}],"ScratchPath":"/run/gcs/c/c1/scratch/c1"}}', "CombinedLayers"),
    ('{"RequestType":"Remove","ResourceType":"CombinedLayers","Settings":{"ContainerRootPath":"/run/gcs/c/c1/rootfs"}}', "CombinedLayers"),
    ('{"RequestType":"Add","ResourceType":"MappedDirectory","Settings":{"MountPath":"/run/gcs/c/c1/mounts/m3","Port":564,"ShareName":"4","ReadOnly":true}}', "MappedDirectory"),
    ('{"RequestType":"Add","ResourceType":"Network","Settings":{"NamespaceID":"f2a1","ID":"6f0e","MacAddress":"00-15-5D-00-00-01","DNSSuffix":"svc.cluster.local,cluster.local","DNSServerList":"10.0.0.10","IPConfigs":[{"IPAddress":"10.1.2.3","PrefixLength":24}],"Routes":[{"NextHop":"10.1.2.1","DestinationPrefix":"0.0.0.0/0"}]}}', "Network"),
    ('{"RequestType":"Remove","ResourceType":"Network","Settings":{"NamespaceID":"f2a1","ID":"6f0e"}}', "Network"),
    ('{"RequestType":"Add","ResourceType":"VPCIDevice","Settings":{"VMBusGUID":"%s"}}' % AID, "VPCIDevice"),
    ('{"RequestType":"Update","ResourceType":"PodCgroupMemoryLimit"}', "PodCgroupMemoryLimit"),
    ('{"RequestType":"Update","ResourceType":"ContainerConstraints","Settings":{"Windows":{},"Linux":{"memory":{"limit":536870912},"cpu":{"shares":512}}}}', "ContainerConstraints"),
]


@pytest.mark.parametrize("request_json,resource", MODIFY_EXAMPLES)
def test_modify_settings_examples(request_json, resource):
    req = through_session(RequestId.MODIFY_SETTINGS, '{"ContainerId":"%s","ActivityId":"%s","Request":%s}' % (ZERO, AID, request_json))
    raw = json.loads(request_json)
    assert req.resource_type == resource and req.request_type == raw["RequestType"]
    if "Settings" in raw:
        assert req.settings.data == raw["Settings"]


def test_empty_request_type_defaults_to_add():
    req = through_session(RequestId.MODIFY_SETTINGS, '{"ContainerId":"%s","Request":{"ResourceType":"VPMemDevice"}}' % ZERO)
    assert req.request_type == "Add"


REPLY_EXAMPLES = [
    (response(AID, SelectedProtocolVersion=0), '{"Result":0,"ActivityId":"%s","SelectedProtocolVersion":0}' % AID),
    (response(AID), '{"Result":0,"ActivityId":"%s"}' % AID),
    (response(AID, ProcessId=512), '{"Result":0,"ActivityId":"%s","ProcessId":512}' % AID),
    (response(AID, ExitCode=0), '{"Result":0,"ActivityId":"%s","ExitCode":0}' % AID),
    (response(AID, Properties=encode_json({"ProcessList": [{"ProcessId": 512}]})),
     '{"Result":0,"ActivityId":"%s","Properties":"{\\"ProcessList\\":[{\\"ProcessId\\":512}]}"}' % AID),
    (response(AID, GuestStacks="goroutine 1"), '{"Result":0,"ActivityId":"%s","GuestStacks":"goroutine 1"}' % AID),
    (negotiate_response(ZERO, 4), '{"Result":0,"ActivityId":"00000000-0000-0000-0000-000000000000","Version":4,"Capabilities":{"SupportedSchemaVersions":[{"Major":2,"Minor":1}],"RuntimeOsType":"Linux","GuestDefinedCapabilities":{"NamespaceAddRequestSupported":true,"SignalProcessSupported":true,"DumpStacksSupported":true,"DeleteContainerStateSupported":true}}}'),
    (container_notification("c1", ZERO, "GracefulExit"),
     '{"ContainerId":"c1","ActivityId":"00000000-0000-0000-0000-000000000000","Type":"GracefulExit","Operation":"None","Result":0}'),
]


@pytest.mark.parametrize("built,documented", REPLY_EXAMPLES)
def test_reply_examples(built, documented):
    assert encode_reply(built).decode() == documented


def test_error_reply_shape():
    err = hr.GcsError(hr.SYSTEM_NOT_FOUND, "container c1 not found")
    reply = error_response(AID, err)
    assert encode_reply(reply).decode() == (
        '{"Result":-1070137074,"ActivityId":"%s","ErrorMessage":"HRESULT 0xc037010e: container c1 not found",'
        '"ErrorRecords":[{"Result":-1070137074,"Message":"HRESULT 0xc037010e: container c1 not found",'
        '"ModuleName":"gcs","FileName":"","Line":4294967295}]}' % AID)


def test_unknown_errors_are_e_fail():
    assert error_response(AID, ValueError("boom"))["Result"] == hr.to_int32(hr.E_FAIL)


@pytest.mark.parametrize("activity", ["", "abc", None, 5, "00000000-0000-0000-0000-00000000000"])
def test_invalid_activity_ids_are_omitted(activity):
    assert "ActivityId" not in response(activity)  # type: ignore[arg-type]
    assert container_notification("c1", activity, "UnexpectedExit")["ActivityId"] == ZERO  # type: ignore[arg-type]


def test_hresults_are_signed_int32():
    assert hr.to_int32(0xC037010E) == -1070137074
    assert hr.to_int32(0x80004001) == -2147467263
    assert hr.to_int32(0x80370105) == -2143878907
    assert hr.to_int32(0) == 0


def test_notification_result_info_is_a_json_string():
    note = container_notification("c1", AID, "UnexpectedExit", {"oom_killed": True})
    assert note["ResultInfo"] == '{"oom_killed":true}'


def test_response_id_for_every_request():
    for ident in REQUEST_IDS:
        assert response_id(ident) == (ident & 0x0FFFFFFF) | 0x20000000
    assert response_id(0x10FFFF01) == 0x20FFFF01


def test_parse_request_rejects_wrong_shapes():
    with pytest.raises(hr.GcsError) as info:
        parse_request(RequestId.WAIT_FOR_PROCESS, b'{"ProcessId":"12"}')
    assert info.value.hresult == hr.INVALID_JSON
