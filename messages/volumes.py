"""Arguments of the volume, disk and job operations (docs/contract.md "Operations")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StringConstraints, model_validator

from messages.fields import AbsolutePath, CommandId, PositiveSize, ResourceName, Size, Strict, VolumeName

# libvirt's volume formats (storagecommon.rng, virStorageFileFormat); it has no "vhdx". Then, since
# version 2, the rest of what its pool capabilities list: "none" and "vhd" (file pools) and the
# partition types of disk pools ("none" is a plain partition there).
VolumeFormat = Literal[
    "raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vdi", "bochs", "cloop", "dmg", "iso",
    "cow", "fat", "dir", "ploop",
    "none", "vhd", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid", "extended",
]
# Formats that can point at a backing volume.
BACKING_FORMATS = frozenset({"qcow2", "qcow", "qed", "vmdk"})

FORCE_DOC = ("Go ahead although domains that are not running, or volumes built on this one, use the volume "
             "(never under a running guest)")

WipeAlgorithm = Literal[
    "zero", "nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7", "pfitzner33", "random", "trim",
]


class VolumeRef(Strict):
    pool: ResourceName
    name: VolumeName


class VolumeNameArgs(Strict):
    pool: ResourceName
    name: VolumeName


class VolumeListArgs(Strict):
    pool: ResourceName


class VolumeCreateArgs(Strict):
    pool: ResourceName
    name: VolumeName
    capacity: PositiveSize
    allocation: Size = Field(0, description="Bytes allocated up front; default 0 (sparse), as virsh vol-create-as")
    format: VolumeFormat | None = Field(None, description="Default: raw for file-based pools")
    prealloc_metadata: StrictBool = False
    backing: VolumeRef | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "VolumeCreateArgs":
        if self.allocation > self.capacity:
            raise ValueError(f"allocation {self.allocation} is larger than capacity {self.capacity}")
        if self.backing is not None and self.format not in BACKING_FORMATS:
            raise ValueError(f"a backing volume needs a format that supports one "
                             f"({', '.join(sorted(BACKING_FORMATS))}), got format {self.format!r}")
        # No format means raw on file pools, where libvirt refuses metadata preallocation.
        if self.prealloc_metadata and self.format != "qcow2":
            raise ValueError(f"prealloc_metadata applies to qcow2 volumes, got format {self.format!r}")
        return self


class VolumeCloneArgs(Strict):
    pool: ResourceName
    source: VolumeName
    name: VolumeName
    source_pool: ResourceName | None = Field(None, description="Default: the same pool")
    format: VolumeFormat | None = Field(None, description="Default: the source's format")
    capacity: PositiveSize | None = Field(None, description="Default: the source's capacity")
    reflink: Literal["auto"] | StrictBool = Field(
        "auto", description="Share the source's extents (copy-on-write) instead of copying: true insists "
                            "(unsupported where the file system or libvirt cannot), false never, auto where it can")
    flatten: StrictBool = Field(False, description="Of an overlay: a self-contained copy instead of a new overlay "
                                                    "of the same backing store")

    @model_validator(mode="after")
    def _consistent(self) -> "VolumeCloneArgs":
        if self.reflink is True and self.flatten:
            raise ValueError("reflink: true shares the source's bytes as they are and cannot flatten them; "
                             "send reflink: auto or false with flatten: true")
        return self


class VolumeResizeArgs(Strict):
    pool: ResourceName
    name: VolumeName
    capacity: PositiveSize
    shrink: StrictBool = False
    allocate: StrictBool = False
    force: StrictBool = Field(False, description=FORCE_DOC)


class VolumeWipeArgs(Strict):
    pool: ResourceName
    name: VolumeName
    algorithm: WipeAlgorithm = "zero"
    force: StrictBool = Field(False, description=FORCE_DOC)


class UploadSource(Strict):
    path: AbsolutePath | None = None
    url: Annotated[str, StringConstraints(max_length=4096, pattern=r"^https?://[^\s]+$")] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "UploadSource":
        if (self.path is None) == (self.url is None):
            raise ValueError("source takes exactly one of path or url")
        return self


class DownloadDestination(Strict):
    path: AbsolutePath


class VolumeUploadArgs(Strict):
    pool: ResourceName
    name: VolumeName
    source: UploadSource
    offset: Size = 0
    length: Size | None = Field(None, description="Default: the whole source")
    sparse: StrictBool = True
    force: StrictBool = Field(False, description=FORCE_DOC)


class VolumeDownloadArgs(Strict):
    pool: ResourceName
    name: VolumeName
    destination: DownloadDestination
    offset: Size = 0
    length: Size | None = Field(None, description="Default: to the end of the volume")
    sparse: StrictBool = True


class VolumeDeleteArgs(Strict):
    pool: ResourceName
    name: VolumeName
    wipe: StrictBool = Field(False, description="Overwrite the data with zeros before deleting")
    force: StrictBool = Field(False, description=FORCE_DOC)


DiskTarget = Annotated[str, StringConstraints(pattern=r"^(vd|sd|hd|xvd)[a-z]{1,3}$"),
                       Field(description="Guest device name, e.g. vdb")]
DiskBus = Literal["virtio", "scsi", "sata", "ide", "usb", "xen"]


class VolumeAttachArgs(Strict):
    domain: ResourceName
    pool: ResourceName
    name: VolumeName
    target: DiskTarget
    bus: DiskBus | None = Field(None, description="Default: derived from the target prefix")
    readonly: StrictBool = False
    live: StrictBool | None = Field(None, description="Default: when the domain is running")
    config: StrictBool = Field(True, description="Persist in the domain's definition")


class VolumeDetachArgs(Strict):
    domain: ResourceName
    target: DiskTarget
    live: StrictBool | None = Field(None, description="Default: when the domain is running")
    config: StrictBool = True


class JobCancelArgs(Strict):
    id: CommandId


class NoArgs(Strict):
    pass
