subnet "app" {
  cidr = "192.168.10.0/24"

vm "web" {
  address = "192.168.10.11"
}
