//! Accounts imported with only some SCRAM hashes (XEP-0227 from Prosody or ejabberd) log in,
//! and their first PLAIN login completes the keys for every mechanism.

use starling_storage::BareJid;
use starling_testkit::TestNode;
use starling_xmpp::scram::{Credentials, ScramHash};

#[tokio::test]
async fn plain_login_completes_partial_scram_keys() {
    let node = TestNode::start().await.unwrap();
    node.register("old", "pw").await.unwrap();
    let user: BareJid = "old@localhost".parse().unwrap();
    let stores = node.server.stores();
    let full = stores.credentials(&user).await.unwrap().unwrap();
    // As imported from a server that kept SCRAM-SHA-1 only.
    let partial = Credentials::from_keys([full.keys(ScramHash::Sha1).unwrap().clone()]).unwrap();
    stores.set_credentials(&user, &partial).await.unwrap();
    assert!(
        !stores
            .credentials(&user)
            .await
            .unwrap()
            .unwrap()
            .is_complete()
    );

    assert!(node.login("old", "wrong", "r").await.is_err());
    node.login("old", "pw", "r").await.unwrap();
    let now = stores.credentials(&user).await.unwrap().unwrap();
    assert!(now.is_complete());
    assert!(now.verify_plain("pw"));
}
