//! XEP-0050 ad-hoc commands and XEP-0133 service administration (`mod_adhoc`,
//! `mod_configure`), run from an admin's XMPP session.

use starling_testkit::{Client, TestNode, error_condition};
use starling_xmpp::Element;

const COMMANDS: &str = "http://jabber.org/protocol/commands";
const ADMIN: &str = "http://jabber.org/protocol/admin";

async fn node() -> TestNode {
    TestNode::start_with_modules(
        "mod_adhoc: {}\nmod_configure: {}",
        "acl:\n  admin: {user: [boss@localhost]}\n",
    )
    .await
    .unwrap()
}

fn command(id: &str, node: &str, inner: &str) -> String {
    format!(
        "<iq type='set' id='{id}' to='localhost'><command xmlns='{COMMANDS}' node='{node}' {inner}</iq>"
    )
}

fn field_values(el: &Element, var: &str) -> Vec<String> {
    let Some(command) = el.get_child("command", COMMANDS) else {
        return Vec::new();
    };
    command
        .children()
        .filter(|x| x.name() == "x")
        .flat_map(|x| x.children())
        .filter(|f| f.name() == "field" && f.attr("var") == Some(var))
        .flat_map(|f| f.children())
        .filter(|v| v.name() == "value")
        .map(Element::text)
        .collect()
}

fn status(el: &Element) -> Option<String> {
    el.get_child("command", COMMANDS)
        .and_then(|c| c.attr("status"))
        .map(str::to_owned)
}

fn session_id(el: &Element) -> String {
    el.get_child("command", COMMANDS)
        .and_then(|c| c.attr("sessionid"))
        .unwrap_or_default()
        .to_owned()
}

async fn admin(node: &TestNode) -> Client {
    node.register("boss", "pw").await.unwrap();
    node.login("boss", "pw", "desk").await.unwrap()
}

#[tokio::test]
async fn admin_lists_commands_and_others_see_none() {
    let node = node().await;
    let mut boss = admin(&node).await;
    let items = boss
        .iq(
            &format!("<iq type='get' id='l1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items' node='{COMMANDS}'/></iq>"),
            "l1",
        )
        .await
        .unwrap();
    let xml = String::from(&items);
    assert!(xml.contains(&format!("{ADMIN}#add-user")), "{xml}");
    assert!(xml.contains("api-commands/registered_users"), "{xml}");
    // The command node's info says what it is.
    let info = boss
        .iq(
            &format!("<iq type='get' id='i1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='{ADMIN}#add-user'/></iq>"),
            "i1",
        )
        .await
        .unwrap();
    let xml = String::from(&info);
    assert!(
        xml.contains("command-node") && xml.contains(COMMANDS),
        "{xml}"
    );

    node.register("pleb", "pw").await.unwrap();
    let mut pleb = node.login("pleb", "pw", "r").await.unwrap();
    let items = pleb
        .iq(
            &format!("<iq type='get' id='l2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items' node='{COMMANDS}'/></iq>"),
            "l2",
        )
        .await
        .unwrap();
    assert_eq!(items.attr("type"), Some("result"));
    assert!(
        !String::from(&items).contains("<item"),
        "{}",
        String::from(&items)
    );
    let refused = pleb
        .iq(
            &command("x1", &format!("{ADMIN}#add-user"), "action='execute'/>"),
            "x1",
        )
        .await
        .unwrap();
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn add_user_then_change_password_then_delete() {
    let node = node().await;
    let mut boss = admin(&node).await;
    let add = format!("{ADMIN}#add-user");
    let form = boss
        .iq(&command("a1", &add, "action='execute'/>"), "a1")
        .await
        .unwrap();
    assert_eq!(status(&form).as_deref(), Some("executing"));
    let sid = session_id(&form);
    assert!(!sid.is_empty());
    let submit = |id: &str, sid: &str, pw2: &str| {
        command(
            id,
            &add,
            &format!(
                "sessionid='{sid}' action='complete'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>{ADMIN}</value></field>\
                 <field var='accountjid'><value>newbie@localhost</value></field>\
                 <field var='password'><value>s3cret</value></field>\
                 <field var='password-verify'><value>{pw2}</value></field></x></command>"
            ),
        )
    };
    // Mismatched passwords: completed with an error note, nothing created.
    let done = boss.iq(&submit("a2", &sid, "other"), "a2").await.unwrap();
    assert_eq!(status(&done).as_deref(), Some("completed"));
    assert!(
        String::from(&done).contains("type=\"error\"")
            || String::from(&done).contains("type='error'")
    );
    // The session is used up: resubmitting it is a bad session id.
    let stale = boss.iq(&submit("a3", &sid, "s3cret"), "a3").await.unwrap();
    assert_eq!(error_condition(&stale).as_deref(), Some("bad-request"));
    assert!(String::from(&stale).contains("bad-sessionid"));

    let form = boss
        .iq(&command("a4", &add, "action='execute'/>"), "a4")
        .await
        .unwrap();
    let sid = session_id(&form);
    let done = boss.iq(&submit("a5", &sid, "s3cret"), "a5").await.unwrap();
    assert_eq!(
        status(&done).as_deref(),
        Some("completed"),
        "{}",
        String::from(&done)
    );
    assert!(
        !String::from(&done).contains("error"),
        "{}",
        String::from(&done)
    );
    node.login("newbie", "s3cret", "r").await.unwrap();

    // Change the password through XEP-0133.
    let change = format!("{ADMIN}#change-user-password");
    let form = boss
        .iq(&command("c1", &change, "action='execute'/>"), "c1")
        .await
        .unwrap();
    let sid = session_id(&form);
    let done = boss
        .iq(
            &command(
                "c2",
                &change,
                &format!(
                    "sessionid='{sid}'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='accountjid'><value>newbie@localhost</value></field>\
                     <field var='password'><value>n3w</value></field></x></command>"
                ),
            ),
            "c2",
        )
        .await
        .unwrap();
    assert_eq!(status(&done).as_deref(), Some("completed"));
    node.login("newbie", "n3w", "r2").await.unwrap();

    // Count, list online users.
    let count = boss
        .iq(
            &command(
                "n1",
                &format!("{ADMIN}#get-registered-users-num"),
                "action='execute'/>",
            ),
            "n1",
        )
        .await
        .unwrap();
    assert_eq!(field_values(&count, "registeredusersnum"), vec!["2"]);
    let online = boss
        .iq(
            &command("n2", &format!("{ADMIN}#get-online-users-list"), "/>"),
            "n2",
        )
        .await
        .unwrap();
    let jids = field_values(&online, "onlineuserjids");
    assert!(
        jids.iter().any(|j| j.starts_with("boss@localhost/")),
        "{jids:?}"
    );

    // Delete.
    let delete = format!("{ADMIN}#delete-user");
    let form = boss
        .iq(&command("d1", &delete, "action='execute'/>"), "d1")
        .await
        .unwrap();
    let sid = session_id(&form);
    let done = boss
        .iq(
            &command(
                "d2",
                &delete,
                &format!(
                    "sessionid='{sid}'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='accountjids'><value>newbie@localhost</value></field></x></command>"
                ),
            ),
            "d2",
        )
        .await
        .unwrap();
    assert_eq!(status(&done).as_deref(), Some("completed"));
    assert!(node.login("newbie", "n3w", "r3").await.is_err());
}

#[tokio::test]
async fn registry_commands_run_and_announcements_reach_online_users() {
    let node = node().await;
    let mut boss = admin(&node).await;
    node.register("ann", "pw").await.unwrap();
    let mut ann = node.login("ann", "pw", "phone").await.unwrap();

    // A registry command with an argument, through its form.
    let api = "api-commands/registered_users";
    let form = boss
        .iq(&command("r1", api, "action='execute'/>"), "r1")
        .await
        .unwrap();
    let sid = session_id(&form);
    let done = boss
        .iq(
            &command(
                "r2",
                api,
                &format!(
                    "sessionid='{sid}'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='host'><value>localhost</value></field></x></command>"
                ),
            ),
            "r2",
        )
        .await
        .unwrap();
    let users = field_values(&done, "result");
    assert_eq!(users, vec!["ann", "boss"]);
    // Unknown nodes are item-not-found.
    let unknown = boss
        .iq(&command("r3", "api-commands/nope", "/>"), "r3")
        .await
        .unwrap();
    assert_eq!(error_condition(&unknown).as_deref(), Some("item-not-found"));

    let announce = format!("{ADMIN}#announce");
    let form = boss
        .iq(&command("b1", &announce, "/>"), "b1")
        .await
        .unwrap();
    let sid = session_id(&form);
    boss.iq(
        &command(
            "b2",
            &announce,
            &format!(
                "sessionid='{sid}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='subject'><value>Maintenance</value></field>\
                 <field var='announcement'><value>Back at noon</value></field></x></command>"
            ),
        ),
        "b2",
    )
    .await
    .unwrap();
    let headline = ann
        .wait_for(|e| e.name() == "message" && e.attr("type") == Some("headline"))
        .await
        .unwrap();
    assert_eq!(headline.attr("from"), Some("localhost"));
    assert!(String::from(&headline).contains("Back at noon"));
}
