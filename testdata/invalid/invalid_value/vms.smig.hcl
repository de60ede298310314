subnet "db" {
  cidr = "192.168.20.1/24"
}

vm "web" {
  host    = environment.dc.host.hv1
  subnet  = subnet.app
  address = "192.168.10.300"
  migration {
    mode     = "warm"
    strategy = "prestaged"
  }
}
