import pytest

from gcs.flags import UsageError, parse


def test_host_command_line_is_accepted():
    o = parse(["-v4", "-log-format", "json", "-loglevel", "info", "-disable-time-sync", "-scrub-logs=false",
               "-core-dump-location", "/tmp/core", "--transport", "vsock"])
    assert o.v4 and o.loglevel == "info" and o.disable_time_sync and not o.scrub_logs
    assert o.transport == "vsock" and o.core_dump_location == "/tmp/core"


def test_go_flag_spellings():
    o = parse(["--loglevel=debug", "-use-inouterr"])
    assert o.loglevel == "debug" and o.bridge_stdio
    o = parse(["-transport=hybrid:/x", "--bridge-listen", "0x40000000", "-local=true"])
    assert o.transport == "hybrid:/x" and o.bridge_listen == 0x40000000 and o.local


def test_local_refuses_vsock():
    with pytest.raises(UsageError, match="vsock"):
        parse(["--local", "--transport", "vsock"])


@pytest.mark.parametrize("argv", [[], ["--nope"], ["-loglevel"], ["--transport", "vsock", "extra"],
                                  ["--transport", "vsock", "-local=maybe"],
                                  ["--bridge-stdio", "--bridge-listen", "5"]])
def test_bad_command_lines(argv):
    with pytest.raises(UsageError):
        parse(argv)
