import pytest
from aiohttp import ClientSession

from stage.config import Settings
from stage.server import create_app

pytest_plugins = ["tests.media", "tests.browser"]


@pytest.fixture(autouse=True, scope="session")
def loopback_only():
    """Every aiortc peer in the tests, server or client, gathers on 127.0.0.1 only."""
    from stage.relay.ice import gather_on

    gather_on(("127.0.0.1",))


@pytest.fixture
def settings(tmp_path):
    return Settings(
        data=tmp_path / "data", ice_addresses=("127.0.0.1",), view_seconds=1.0
    )


@pytest.fixture
async def server(aiohttp_server, settings):
    """The real application on 127.0.0.1, on a free port."""
    app = create_app(settings)
    srv = await aiohttp_server(app, host="127.0.0.1")
    srv.base = str(srv.make_url("")).rstrip("/")
    return srv


@pytest.fixture
async def http():
    async with ClientSession() as session:
        yield session


@pytest.fixture
def new_stage(server, http):
    async def create(name="The Band"):
        async with http.post(
            f"{server.base}/api/stages", json={"name": name}
        ) as response:
            assert response.status == 201, await response.text()
            return await response.json()

    return create


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    """The static ffmpeg of the imageio-ffmpeg wheel: it has the WHIP muxer."""
    try:
        import imageio_ffmpeg
    except ImportError:
        pytest.fail("imageio-ffmpeg is not installed (see requirements.txt)")
    return imageio_ffmpeg.get_ffmpeg_exe()
