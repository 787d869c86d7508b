//! XEP-0004 data forms: the few shapes modules build (fields with values) and read back
//! (the values of a submitted form, by `var`).

use std::collections::HashMap;

use starling_xmpp::Element;
use starling_xmpp::ns;
use starling_xmpp::stanza::{element, set_attr, text_element};

/// A `<field/>` of type `kind` with an optional label and its values.
pub(crate) fn field(var: &str, kind: &str, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = element("field", ns::DATA_FORMS, &[("var", var), ("type", kind)]);
    if let Some(label) = label {
        set_attr(&mut f, "label", label);
    }
    for v in values {
        f.append_child(text_element("value", ns::DATA_FORMS, v));
    }
    f
}

/// A form (`type` = `form` or `result`) whose hidden `FORM_TYPE` is `form_type`, when given.
pub(crate) fn form(kind: &str, title: Option<&str>, form_type: Option<&str>) -> Element {
    let mut x = element("x", ns::DATA_FORMS, &[("type", kind)]);
    if let Some(title) = title {
        x.append_child(text_element("title", ns::DATA_FORMS, title));
    }
    if let Some(form_type) = form_type {
        x.append_child(field("FORM_TYPE", "hidden", None, &[form_type]));
    }
    x
}

/// The values of each field of a submitted form (`<x type='submit'/>`), by `var`.
pub(crate) fn submitted_values(x: &Element) -> HashMap<String, Vec<String>> {
    x.children()
        .filter(|c| c.is("field", ns::DATA_FORMS))
        .filter_map(|f| {
            let var = f.attr("var")?.to_owned();
            let values = f
                .children()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect();
            Some((var, values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_through_a_submission() {
        let mut x = form("submit", None, Some("urn:example"));
        x.append_child(field("a", "text-single", Some("A"), &["1"]));
        x.append_child(field("b", "jid-multi", None, &["x@y", "z@y"]));
        let values = submitted_values(&x);
        assert_eq!(values.get("a"), Some(&vec!["1".to_owned()]));
        assert_eq!(values.get("b").map(Vec::len), Some(2));
        assert_eq!(
            values.get("FORM_TYPE"),
            Some(&vec!["urn:example".to_owned()])
        );
        assert!(!values.contains_key("c"));
    }
}
