import ipaddr from 'ipaddr.js'

/** Decides whether the avatar fetcher may connect to a resolved IP address. */
export type AddressPolicy = (address: string) => boolean

/**
 * True only for globally routable unicast addresses. Loopback, private, link-local (including the
 * 169.254.169.254 metadata service), unique-local, carrier-grade NAT, multicast, reserved and the
 * IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo) are all refused.
 */
export function isPublicAddress (address: string): boolean {
  if (!ipaddr.isValid(address)) return false
  let parsed = ipaddr.parse(address)
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) {
    parsed = (parsed as ipaddr.IPv6).toIPv4Address()
  }
  return parsed.range() === 'unicast'
}

export const allowAnyAddress: AddressPolicy = () => true

export function addressPolicy (allowPrivateNetworks: boolean): AddressPolicy {
  return allowPrivateNetworks ? allowAnyAddress : isPublicAddress
}
