vm "web" {
  host   = environment.dc.host.hv1
  subnet = subnet.app
}

secure_link "web_db" {
  between = [vm.web, vm.web]
}
