variable "psk" {
  type      = string
  sensitive = true
  default   = "short-canary-5c1d"
  validation {
    condition     = length(var.psk) >= 32
    error_message = "the pre-shared key ${var.psk} must be at least 32 characters"
  }
}

variable "parallelism" {
  type    = number
  default = 0
  validation {
    condition     = var.parallelism >= 1 && var.parallelism <= 64
    error_message = "parallelism must be between 1 and 64, not ${var.parallelism}"
  }
}
