vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, 10 + count.index)
  domain  = "web-${each.key}"
}
