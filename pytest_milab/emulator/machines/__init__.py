"""The machines: live VMs (`vms`) with their IMDS (`imds`) and network view (`topology`), the
on-premises servers for Azure Arc (`arc`, with the `azcmagent` and `arcsudo` scripts that run
inside them), what a machine's shell finds (`userland`), and the control endpoint that racks a
server (`control`)."""
