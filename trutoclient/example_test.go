package trutoclient_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/orgsync/orgsync/trutoclient"
)

func Example() {
	// A stand-in for Truto that answers every PATCH with the updated organization.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Printf("server: %s %s\nserver: key=%s body=%s\n", r.Method, r.URL.RequestURI(), r.Header.Get("Idempotency-Key"), body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"23423523","name":"Acme","remote_data":{"tier":"gold"}}`)
	}))
	defer srv.Close()

	client, err := trutoclient.New("my-api-token", trutoclient.WithBaseURL(srv.URL))
	if err != nil {
		fmt.Println(err)
		return
	}
	org, resp, err := client.UpdateOrganization(context.Background(), &trutoclient.UpdateOrganizationRequest{
		ID:                  "23423523",
		IntegratedAccountID: "62f44730-dd91-461e-bd6a-aedd9e0ad79d",
		Body:                []byte(`{"remote_data":{"tier":"gold"}}`),
		Options:             trutoclient.Options{IgnoreRemoteData: true},
		IdempotencyKey:      "update-23423523-1",
	})
	decision := trutoclient.Classify(resp, err)
	fmt.Println("decision:", decision.Class, decision.Reason)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("organization:", org.ID, org.Name)
	// Output:
	// server: PATCH /unified/user-directory/organizations/23423523?integrated_account_id=62f44730-dd91-461e-bd6a-aedd9e0ad79d&truto_ignore_remote_data=true
	// server: key=update-23423523-1 body={"remote_data":{"tier":"gold"}}
	// decision: success 200 OK
	// organization: 23423523 Acme
}
