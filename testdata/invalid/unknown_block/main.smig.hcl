subnet "app" {
  cidr = "192.168.10.0/24"
}

virtual_machine "web" {
  subnet = subnet.app
}

environment "dc" {
  trusted = true
  hypervisor "hv1" {
    address = "10.77.0.11"
  }
}
