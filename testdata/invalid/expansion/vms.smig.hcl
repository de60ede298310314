vm "web" {
  count   = 1e12
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, count.index)
}

vm "db" {
  for_each = 3
  host     = environment.dc.host.hv1
  subnet   = subnet.app
  address  = "192.168.10.20"
}
