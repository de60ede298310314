subnet "app" {
  cidr = "192.168.10.0/24"
  vlan = 10
}

policy {
  paralelism = 8
}
