locals {
  offset = "ten"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, 10 + local.offset)
}

vm "db" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = cidrhost(subnet.app.cidr, 300)
  domain  = upcase("db")
}
