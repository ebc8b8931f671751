"""containerd's image records: names pointing at a root manifest or index."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from grpclib.client import Channel

from .._proto.containerd.services.images import v1 as images_pb
from .._proto.google.protobuf import FieldMask
from ..errors import map_errors
from ._store_types import Descriptor, ImageRecord

#: Bound on an image call; a synchronous delete waits for a garbage collection.
CALL_TIMEOUT = 60.0


class ImageStore:
    """The image records of one namespace."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str]) -> None:
        self._stub = images_pb.ImagesStub(channel, metadata=dict(metadata))

    async def get(self, name: str) -> ImageRecord:
        """The record named ``name``; ``NotFound`` if there is none."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"get image {name}"):
            reply = await self._stub.get(images_pb.GetImageRequest(name=name))
        assert reply.image is not None
        return ImageRecord.from_wire(reply.image)

    async def list(self, *filters: str) -> list[ImageRecord]:
        """Records matching any of containerd's ``filters`` (all without)."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors("list images"):
            reply = await self._stub.list(images_pb.ListImagesRequest(filters=list(filters)))
        return [ImageRecord.from_wire(image) for image in reply.images]

    async def create(
        self, name: str, target: Descriptor, *, labels: Mapping[str, str] | None = None
    ) -> ImageRecord:
        """A new record; ``AlreadyExists`` if the name is taken."""
        image = images_pb.Image(name=name, target=target.to_wire(), labels=dict(labels or {}))
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"create image {name}"):
            reply = await self._stub.create(images_pb.CreateImageRequest(image=image))
        assert reply.image is not None
        return ImageRecord.from_wire(reply.image)

    async def update(
        self, name: str, target: Descriptor, *, labels: Mapping[str, str] | None = None
    ) -> ImageRecord:
        """Point an existing record at ``target`` (and set ``labels`` if given)."""
        paths = ["target"] + [f"labels.{key}" for key in labels or {}]
        image = images_pb.Image(name=name, target=target.to_wire(), labels=dict(labels or {}))
        request = images_pb.UpdateImageRequest(image=image, update_mask=FieldMask(paths=paths))
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"update image {name}"):
            reply = await self._stub.update(request)
        assert reply.image is not None
        return ImageRecord.from_wire(reply.image)

    async def delete(self, name: str, *, sync: bool = False) -> None:
        """Delete the record; with ``sync``, return once containerd's garbage
        collection has removed what nothing else holds."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"delete image {name}"):
            await self._stub.delete(images_pb.DeleteImageRequest(name=name, sync=sync))
