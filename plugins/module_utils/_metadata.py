# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hpcvirt metadata kept in a domain's ``<metadata>`` element.

Modules record a guest's intent (its VSE, its placement, a checkpoint) in the domain itself so
that any later run, on any controller, reads it back without outside state. The element is::

    <hpcvirt:regime xmlns:hpcvirt="https://hpcvirt.dev/xmlns/regime/1">
      <hpcvirt:vse name="web" digest="..."/>
      <hpcvirt:placement mode="dedicated" partition="p0"/>
    </hpcvirt:regime>

As a dict: one key per child element, its attributes as a dict of strings.
"""

from __future__ import annotations

from xml.etree import ElementTree

NAMESPACE = "https://hpcvirt.dev/xmlns/regime/1"
PREFIX = "hpcvirt"
ROOT = "regime"


def parse_metadata(xml_text):
    """Dict form of the hpcvirt element (as libvirt's ``metadata()`` returns it), {} for none."""
    if not xml_text:
        return {}
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError:
        return {}
    data = {}
    for child in root:
        tag = child.tag.split("}", 1)[-1]
        data[tag] = dict(child.attrib)
    return data


def metadata_from_domain_xml(domain_xml):
    """The hpcvirt metadata inside a whole domain XML document."""
    root = ElementTree.fromstring(domain_xml)
    element = root.find("metadata/{%s}%s" % (NAMESPACE, ROOT))
    return parse_metadata(ElementTree.tostring(element, encoding="unicode")) if element is not None else {}


def build_metadata(data):
    """XML text of the hpcvirt element for ``data`` (keys and attributes sorted, values as str)."""
    ElementTree.register_namespace(PREFIX, NAMESPACE)
    root = ElementTree.Element("{%s}%s" % (NAMESPACE, ROOT))
    for key in sorted(data):
        attrs = {k: str(v) for k, v in sorted(data[key].items()) if v is not None}
        ElementTree.SubElement(root, "{%s}%s" % (NAMESPACE, key), attrs)
    return ElementTree.tostring(root, encoding="unicode")


def build_metadata_for_libvirt(data):
    """The hpcvirt element as ``setMetadata`` takes it: unqualified, libvirt adds the namespace.

    (A prefixed element that declares its namespace makes libvirt fail with "failed to create a
    new XML namespace".)
    """
    root = ElementTree.Element(ROOT)
    for key in sorted(data):
        attrs = {k: str(v) for k, v in sorted(data[key].items()) if v is not None}
        ElementTree.SubElement(root, key, attrs)
    return ElementTree.tostring(root, encoding="unicode")


def read_domain_metadata(dom, flags=0):
    """hpcvirt metadata of a libvirt domain; {} when it has none."""
    import libvirt  # only called with a live domain, where libvirt is present

    try:
        return parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, flags))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise


def write_domain_metadata(dom, data, flags):
    """Replace the hpcvirt metadata of ``dom`` for the live and/or persistent definition."""
    import libvirt

    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, build_metadata_for_libvirt(data), PREFIX, NAMESPACE, flags)
