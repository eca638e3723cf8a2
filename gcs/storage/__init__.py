"""Storage in the UVM: read-only layers on pmem, SCSI disks, overlay rootfs, Plan 9 shares."""
