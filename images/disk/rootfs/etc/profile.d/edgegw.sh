# edgegw commands on this box talk to the gateway's control socket on the data partition.
export EDGEGW_SOCKET=/var/lib/edgegw/control.sock
